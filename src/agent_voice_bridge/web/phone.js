// The softphone: the browser plays Twilio's side of a bidirectional <Connect><Stream> (protocols.md §A).
//
// Microphone → AudioWorklet "mulaw-capture" (20 ms μ-law frames at 8 kHz) → `media` messages with rising
// sequenceNumber/chunk/timestamp strings. Server `media` → decoded into the "mulaw-playback" worklet's ring
// buffer; server `mark` → queued at the current write position and echoed when playback passes it; `clear`
// → unplayed audio dropped and every pending mark echoed. Everything the page measures is on
// `window.softphone` (counters, levels, events), for people and for tests.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const SPEECH_DB = -40; // a 20 ms frame louder than this is speech (as the simulated caller counts it)
  const AGENT_DB = -45;
  const HANGOVER_S = 0.3; // this much quiet ends the caller's speech
  const WINDOW_S = 20; // seconds shown on the timeline
  const KEEP_S = 120; // timeline history kept
  const TURNS_POLL_MS = 1500; // how often the page asks the server for its per-turn breakdown
  const KEY_STORE = 'voice-bridge-api-key';

  // ---- options and the API key (taken from ?key= once, then kept for this tab only)
  const query = new URLSearchParams(location.search);
  let apiKey = sessionStorage.getItem(KEY_STORE) || '';
  if (query.has('key')) {
    apiKey = query.get('key');
    sessionStorage.setItem(KEY_STORE, apiKey);
    query.delete('key');
    const rest = query.toString();
    history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : ''));
  }
  const prebufferMs = Math.max(0, Math.min(500, Number(query.get('jitter') ?? 60)));
  if (query.get('raw') === '1') $('raw').checked = true;

  // ---- μ-law decode table (bit-exact with audioop.ulaw2lin), as floats
  const ULAW = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const u = ~b & 0xff;
    const t = (((u & 0x0f) << 3) + 0x84) << ((u >> 4) & 7);
    ULAW[b] = ((u & 0x80) ? 0x84 - t : t - 0x84) / 32768;
  }

  function randomHex(n) {
    const bytes = crypto.getRandomValues(new Uint8Array(n / 2));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function toBase64(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s);
  }

  function fromBase64(text) {
    const s = atob(text);
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return bytes;
  }

  const fmtS = (t) => `${t.toFixed(2)} s`;

  // ---- what the page knows, for the UI and for tests
  const phone = {
    state: 'idle', // idle | connecting | live | ended | error
    callSid: '',
    line: '', // the line the server gave this call (the one picked, else its default)
    streamSid: '',
    closeCode: null,
    closeReason: '',
    error: '',
    audioRate: 0,
    stats: null,
    events: [], // {t, kind, detail}: t in seconds since the stream started
    latencies: [], // ms, caller's speech end → first audio of the reply playing
    bargeIns: [], // {t, afterMs, droppedMs, marks}
    sentLevels: [], // dB of every 20 ms frame sent
    receivedLevels: [], // dB of every 20 ms of audio received, in arrival order
    receivedClears: [], // index into receivedLevels where each clear fell
    playedLevels: [], // dB of every 20 ms the speaker played
    markEchoes: [], // {t, name, cleared}: when each mark went back (its audio played, or a clear dropped it)
    transcripts: [],
    keys: '', // every key pressed on this call, in order (sent as Twilio's dtmf messages)
    serverTurns: [], // the server's breakdown of each reply: {turn, at_ms, segments: {name: ms}, total_ms}
    serverEvents: [], // what the server says of the call besides its audio, asked for once it closes the stream
    transfer: null, // the AI's transfer, shown not made: {destination, number, reason, warm, twiml, note}
  };
  window.softphone = phone;

  let ctx = null;
  let mic = null;
  let ws = null;
  let capture = null;
  let playback = null;
  let nodes = [];
  let t0 = 0;
  let seq = 0;
  let chunk = 0;
  let accountSid = '';
  let recvBlock = 0;
  let recvSum = 0;
  let you = null; // speech detector state
  let agent = null;
  let lanes = null; // timeline data
  let muted = false;
  let turnsPoll = null; // interval asking the server for its per-turn breakdown while the call is live
  let turnsShown = new Set(); // turns already in the event list

  function resetCall() {
    phone.callSid = '';
    phone.line = '';
    phone.streamSid = '';
    phone.closeCode = null;
    phone.closeReason = '';
    phone.error = '';
    phone.stats = {
      framesSent: 0, messagesSent: 0, mediaReceived: 0, bytesReceived: 0, marksReceived: 0, marksEchoed: 0,
      clears: 0, clearedMs: 0, gaps: 0, bufferedMs: 0, playing: false, micLevel: -100, agentLevel: -100,
      receivedLevel: -100, replies: 0,
    };
    for (const k of ['events', 'latencies', 'bargeIns', 'sentLevels', 'receivedLevels', 'receivedClears',
      'playedLevels', 'markEchoes', 'transcripts', 'serverTurns', 'serverEvents']) phone[k] = [];
    phone.transfer = null;
    turnsShown = new Set();
    seq = 0;
    chunk = 0;
    recvBlock = 0;
    recvSum = 0;
    you = { speaking: false, loudRun: 0, lastLoud: -1, start: 0, end: -1, awaitingReply: false };
    agent = { playing: false, since: 0, lastDrain: -10 };
    lanes = { you: [], agent: [], youSpans: [], agentSpans: [], clears: [], latencies: [] };
    phone.keys = '';
    $('keys').textContent = 'none';
    $('events').textContent = '';
    $('transcript').querySelectorAll('li:not(.none)').forEach((li) => li.remove());
  }

  const now = () => (ctx ? ctx.currentTime - t0 : 0);

  function event(kind, detail = '', t = now()) {
    phone.events.push({ t, kind, detail });
    const li = document.createElement('li');
    li.className = kind;
    const ts = document.createElement('span');
    ts.className = 't';
    ts.textContent = t.toFixed(2);
    li.append(ts, `${kind.replace('bargein', 'barge-in')}${detail ? `: ${detail}` : ''}`);
    const list = $('events');
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }

  function setState(state, message = '') {
    phone.state = state;
    const pill = $('status');
    pill.textContent = state;
    pill.className = `pill ${state}`;
    const msg = $('message');
    msg.textContent = message;
    msg.className = state === 'error' ? 'message error' : 'message';
    const busy = state === 'connecting' || state === 'live';
    $('call').disabled = busy;
    $('hangup').disabled = !busy;
    $('mute').disabled = state !== 'live';
    $('raw').disabled = busy;
    $('line').disabled = busy;
    for (const key of $('keypad').querySelectorAll('button')) key.disabled = state !== 'live';
  }

  async function api(path) {
    const headers = apiKey ? { 'X-API-Key': apiKey } : {};
    const response = await fetch(path, { headers, cache: 'no-store' });
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
      throw new Error(`${path}: ${detail}`);
    }
    return response.json();
  }

  function send(message) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    phone.stats.messagesSent++;
    return true;
  }

  // ---- calling

  async function call() {
    if (phone.state === 'connecting' || phone.state === 'live') return;
    resetCall();
    setState('connecting', 'opening the microphone…');
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error('the microphone needs a secure page: open it over https:// or on localhost');
      }
      const raw = $('raw').checked;
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: !raw, noiseSuppression: !raw, autoGainControl: !raw },
      });
      ctx = new AudioContext({ latencyHint: 'interactive' });
      phone.audioRate = ctx.sampleRate;
      await ctx.audioWorklet.addModule('/phone/static/phone-worklet.js');
      if (ctx.state !== 'running') await ctx.resume();
      setState('connecting', 'asking the server for a line…');
      const picked = $('line').value;
      const line = await api(picked ? `/phone/token?line=${encodeURIComponent(picked)}` : '/phone/token');
      phone.line = line.line;
      phone.callSid = line.callSid;
      phone.streamSid = `MZ${randomHex(32)}`;
      accountSid = `AC${randomHex(32)}`;
      buildGraph();
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      ws = new WebSocket(`${scheme}://${location.host}${line.streamPath}`);
      ws.onopen = () => startStream(line.parameters);
      ws.onmessage = (e) => onServerMessage(e.data);
      ws.onclose = (e) => ended(e.code, e.reason);
    } catch (err) {
      fail(err);
    }
  }

  function buildGraph() {
    const source = ctx.createMediaStreamSource(mic);
    capture = new AudioWorkletNode(ctx, 'mulaw-capture', {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], channelCount: 1, channelCountMode: 'explicit',
    });
    const sink = ctx.createGain();
    sink.gain.value = 0; // keeps the capture node pulled by the graph; nothing of the mic is heard
    playback = new AudioWorkletNode(ctx, 'mulaw-playback', {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { prebufferMs },
    });
    capture.port.onmessage = (e) => onCaptureFrame(e.data);
    playback.port.onmessage = (e) => onPlayback(e.data);
    source.connect(capture);
    capture.connect(sink).connect(ctx.destination);
    playback.connect(ctx.destination);
    nodes = [source, capture, sink, playback];
  }

  function startStream(parameters) {
    send({ event: 'connected', protocol: 'Call', version: '1.0.0' });
    seq = 1;
    send({
      event: 'start',
      sequenceNumber: '1',
      streamSid: phone.streamSid,
      start: {
        accountSid,
        streamSid: phone.streamSid,
        callSid: phone.callSid,
        tracks: ['inbound'],
        mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
        customParameters: parameters,
      },
    });
    t0 = ctx.currentTime;
    setState('live', `on the line (audio ${ctx.sampleRate} Hz → 8 kHz μ-law)`);
    event('start', `call ${phone.callSid}`, 0);
    turnsPoll = setInterval(pollServerTurns, TURNS_POLL_MS);
  }

  // ---- the server's side of each reply's latency (observability/timeline.py), beside what the page measures

  const fmtTurn = (turn) => Object.entries(turn.segments).map(([name, ms]) => `${name} ${Math.round(ms)}`)
    .join(' · ') + (turn.total_ms == null ? '' : ` = ${Math.round(turn.total_ms)} ms`);

  async function pollServerTurns() {
    if (phone.state !== 'live') return;
    let turns;
    try {
      turns = await api(`/phone/calls/${encodeURIComponent(phone.callSid)}/turns`);
    } catch { return; } // the call just ended, or the server is busy: the next poll will tell
    phone.serverTurns = turns; // all of them each time: a turn's barge-in is added after its reply
    for (const turn of turns) {
      if (turn.total_ms != null && !turnsShown.has(turn.turn)) {
        turnsShown.add(turn.turn);
        event('server', `turn ${turn.turn}: ${fmtTurn(turn)}`);
      }
    }
  }

  function hangUp() {
    if (phone.state === 'live' && ws && ws.readyState === WebSocket.OPEN) {
      seq++;
      send({ event: 'stop', sequenceNumber: String(seq), streamSid: phone.streamSid,
        stop: { accountSid, callSid: phone.callSid } });
      event('stop', 'hung up');
      ws.close(1000, 'hung up');
    } else if (ws) {
      ws.close(1000, 'hung up');
    }
    teardown();
    if (phone.state !== 'error') setState('ended', 'call ended');
  }

  async function ended(code, reason) {
    phone.closeCode = code;
    phone.closeReason = reason;
    if (phone.state === 'live' || phone.state === 'connecting') {
      const why = reason ? ` (${reason})` : '';
      const t = now();
      teardown();
      if (code === 1000) await showServerEvents(t); // why the server ended it: a transfer, say
      event('closed', `by the server, code ${code}${why}`, t);
      const handedOver = phone.transfer ? `: transferred to ${phone.transfer.destination}` : why;
      if (code === 1000) setState('ended', `the server ended the call${handedOver}`);
      else setState('error', `the server closed the stream: ${code}${why}`);
    }
  }

  // A transfer on the softphone is shown, not made: there is no Twilio call to redirect. The server keeps
  // the call's events a while after it ends, so the page asks once the stream has closed.
  async function showServerEvents(t) {
    try {
      phone.serverEvents = await api(`/phone/calls/${encodeURIComponent(phone.callSid)}/events`);
    } catch { return; } // an older server, or the call is long gone: the close itself is all there is to show
    for (const e of phone.serverEvents) {
      if (e.kind !== 'transfer') continue;
      phone.transfer = e;
      event('transfer', `Transferring to ${e.destination} (${e.number})${e.warm ? ' (warm)' : ''}: ${e.reason}`, t);
      if (e.note) event('server', e.note, t);
      if (e.twiml) event('twiml', e.twiml, t);
    }
  }

  function fail(err) {
    phone.error = String(err && err.message ? err.message : err);
    if (ctx) event('error', phone.error);
    teardown();
    setState('error', phone.error);
  }

  function teardown() {
    if (turnsPoll) clearInterval(turnsPoll);
    turnsPoll = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    ws = null;
    for (const n of nodes) { try { n.disconnect(); } catch { /* already */ } }
    nodes = [];
    if (mic) mic.getTracks().forEach((t) => t.stop());
    mic = null;
    if (ctx) ctx.close().catch(() => {});
    capture = null;
    playback = null;
  }

  function setMuted(on) {
    muted = !!on;
    $('mute').setAttribute('aria-pressed', String(muted));
    $('mute').textContent = muted ? 'Unmute' : 'Mute';
    if (capture) capture.port.postMessage({ type: 'mute', muted });
  }

  // ---- caller → server

  // A key press is one `dtmf` message on the stream, numbered like every other (Twilio sends these on
  // bidirectional streams); the bridge's keypad stage, if the chain has one, tells the AI.
  function pressKey(key) {
    if (phone.state !== 'live' || !/^[0-9*#]$/.test(key)) return false;
    seq++;
    if (!send({ event: 'dtmf', sequenceNumber: String(seq), streamSid: phone.streamSid,
      dtmf: { track: 'inbound_track', digit: key } })) return false;
    phone.keys += key;
    $('keys').textContent = phone.keys;
    event('dtmf', key);
    return true;
  }

  function onCaptureFrame(msg) {
    if (msg.type !== 'frame' || phone.state !== 'live') return;
    chunk++;
    seq++;
    send({
      event: 'media',
      sequenceNumber: String(seq),
      streamSid: phone.streamSid,
      media: { track: 'inbound', chunk: String(chunk), timestamp: String((chunk - 1) * 20), payload: toBase64(msg.bytes) },
    });
    const t = msg.t - t0;
    const s = phone.stats;
    s.framesSent++;
    s.micLevel = msg.level;
    phone.sentLevels.push(msg.level);
    lanes.you.push({ t, level: msg.level });
    // Who is speaking: two loud frames start speech, HANGOVER_S of quiet ends it at the last loud frame.
    if (msg.level > SPEECH_DB) {
      you.loudRun++;
      you.lastLoud = t;
      if (!you.speaking && you.loudRun >= 2) {
        you.speaking = true;
        you.start = t - 0.02 * you.loudRun;
        lanes.youSpans.push({ start: you.start, end: null });
        event('you', 'speaking', you.start);
      }
    } else {
      you.loudRun = 0;
      if (you.speaking && t - you.lastLoud >= HANGOVER_S) {
        you.speaking = false;
        you.end = you.lastLoud;
        you.awaitingReply = true;
        lanes.youSpans[lanes.youSpans.length - 1].end = you.end;
        event('you', `stopped (${(you.end - you.start).toFixed(2)} s of speech)`, you.end);
      }
    }
  }

  // ---- server → caller

  function onServerMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      event('error', 'server sent a message that is not JSON');
      return;
    }
    const s = phone.stats;
    switch (msg.event) {
      case 'media': {
        const bytes = fromBase64(msg.media.payload);
        const samples = new Float32Array(bytes.length);
        for (let i = 0; i < bytes.length; i++) {
          const v = ULAW[bytes[i]];
          samples[i] = v;
          recvSum += v * v;
          if (++recvBlock === 160) {
            const rms = Math.sqrt(recvSum / 160);
            const level = rms > 1e-6 ? Math.max(-100, 20 * Math.log10(rms)) : -100;
            phone.receivedLevels.push(level);
            s.receivedLevel = level;
            recvBlock = 0;
            recvSum = 0;
          }
        }
        s.mediaReceived++;
        s.bytesReceived += bytes.length;
        if (playback) playback.port.postMessage({ type: 'audio', samples }, [samples.buffer]);
        break;
      }
      case 'mark':
        s.marksReceived++;
        if (playback) playback.port.postMessage({ type: 'mark', name: String(msg.mark.name) });
        break;
      case 'clear':
        recvBlock = 0;
        recvSum = 0;
        phone.receivedClears.push(phone.receivedLevels.length);
        if (playback) playback.port.postMessage({ type: 'clear' });
        break;
      case 'transcript': // not Twilio's: shown if a stage ever sends {event, role, text}
        addTranscript(msg.role === 'user' ? 'user' : 'agent', String(msg.text ?? ''));
        break;
      default:
        event('error', `unknown event ${JSON.stringify(msg.event)}`);
    }
  }

  function echoMark(name, t, cleared) {
    seq++;
    if (send({ event: 'mark', sequenceNumber: String(seq), streamSid: phone.streamSid, mark: { name } })) {
      phone.stats.marksEchoed++;
      phone.markEchoes.push({ t, name, cleared });
    }
  }

  function onPlayback(msg) {
    if (!lanes || phone.state !== 'live') return;
    const s = phone.stats;
    const t = msg.t - t0;
    switch (msg.type) {
      case 'tick':
        s.agentLevel = msg.level;
        s.bufferedMs = msg.bufferedMs;
        s.playing = msg.state === 'playing';
        phone.playedLevels.push(msg.level);
        lanes.agent.push({ t, level: msg.level });
        break;
      case 'played':
        echoMark(msg.name, t, false);
        break;
      case 'playing': {
        agent.playing = true;
        agent.since = t;
        if (t - agent.lastDrain < 0.3 && lanes.agentSpans.length) {
          s.gaps++; // the buffer ran dry in the middle of a reply
          lanes.agentSpans[lanes.agentSpans.length - 1].end = null;
          break;
        }
        lanes.agentSpans.push({ start: t, end: null });
        s.replies++;
        if (you.awaitingReply && !you.speaking) {
          const ms = Math.round((t - you.end) * 1000);
          phone.latencies.push(ms);
          lanes.latencies.push({ from: you.end, to: t, ms });
          event('reply', `agent audio ${ms} ms after you stopped`, t);
        } else {
          event('agent', 'speaking', t);
        }
        you.awaitingReply = false;
        break;
      }
      case 'drained':
        agent.playing = false;
        agent.lastDrain = t;
        if (lanes.agentSpans.length) lanes.agentSpans[lanes.agentSpans.length - 1].end = t;
        break;
      case 'cleared': {
        s.clears++;
        s.clearedMs += msg.droppedMs;
        for (const name of msg.marks) echoMark(name, t, true);
        const onset = you.speaking ? you.start : null;
        const afterMs = onset === null ? null : Math.round((t - onset) * 1000);
        phone.bargeIns.push({ t, afterMs, droppedMs: msg.droppedMs, marks: msg.marks.length });
        lanes.clears.push({ t, afterMs });
        agent.lastDrain = -10;
        if (lanes.agentSpans.length && lanes.agentSpans[lanes.agentSpans.length - 1].end === null) {
          lanes.agentSpans[lanes.agentSpans.length - 1].end = t;
        }
        const after = afterMs === null ? '' : `, ${afterMs} ms after you started talking`;
        event('bargein', `cleared ${Math.round(msg.droppedMs)} ms of queued audio, ${msg.marks.length} marks returned${after}`, t);
        break;
      }
      default:
        break;
    }
  }

  function addTranscript(role, text) {
    if (!text) return;
    phone.transcripts.push({ t: now(), role, text });
    const li = document.createElement('li');
    li.className = role;
    li.textContent = `${role === 'user' ? 'you' : 'agent'}: ${text}`;
    $('transcript').append(li);
  }

  // ---- drawing

  function drawTimeline() {
    const canvas = $('timeline');
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const left = 56;
    const right = w - 8;
    const end = Math.max(now(), WINDOW_S);
    const begin = end - WINDOW_S;
    const x = (t) => left + ((t - begin) / WINDOW_S) * (right - left);
    const laneH = 70;
    const lane = { you: 28, agent: 28 + laneH + 22 };
    const axisY = lane.agent + laneH + 18;

    g.font = '12px system-ui, sans-serif';
    g.textBaseline = 'middle';
    g.fillStyle = color('--dim');
    g.fillText('you', 8, lane.you + laneH / 2);
    g.fillText('agent', 8, lane.agent + laneH / 2);
    g.strokeStyle = color('--line');
    g.lineWidth = 1;
    for (let s = Math.ceil(begin); s <= end; s++) {
      if (s < 0) continue;
      const xs = Math.round(x(s)) + 0.5;
      g.beginPath();
      g.moveTo(xs, lane.you - 6);
      g.lineTo(xs, axisY - 8);
      g.stroke();
      if (s % 2 === 0) g.fillText(`${s}s`, Math.min(xs - 8, right - 24), axisY);
    }
    if (!lanes) return;
    if (phone.state === 'live') {
      const xn = Math.round(x(now())) + 0.5;
      g.strokeStyle = color('--dim');
      g.beginPath();
      g.moveTo(xn, lane.you - 6);
      g.lineTo(xn, lane.agent + laneH + 6);
      g.stroke();
    }

    const spans = (list, top, fill) => {
      g.fillStyle = fill;
      for (const sp of list) {
        const a = x(Math.max(sp.start, begin));
        const b = x(sp.end === null ? now() : sp.end);
        if (b > left) g.fillRect(Math.max(a, left), top, b - Math.max(a, left), laneH);
      }
    };
    spans(lanes.youSpans, lane.you, 'rgba(62, 207, 142, 0.12)');
    spans(lanes.agentSpans, lane.agent, 'rgba(74, 163, 255, 0.12)');

    const bars = (list, top, fill) => {
      g.fillStyle = fill;
      const bw = Math.max(1, ((right - left) / WINDOW_S) * 0.02);
      for (const p of list) {
        if (p.t < begin) continue;
        const v = Math.max(0, Math.min(1, (p.level + 70) / 64));
        if (v <= 0) continue;
        const bh = v * laneH;
        g.fillRect(x(p.t) - bw, top + (laneH - bh) / 2, bw, bh);
      }
    };
    bars(lanes.you, lane.you, color('--you'));
    bars(lanes.agent, lane.agent, color('--agent'));

    g.fillStyle = color('--latency');
    g.strokeStyle = color('--latency');
    for (const l of lanes.latencies) {
      if (l.to < begin) continue;
      const a = x(Math.max(l.from, begin));
      const b = x(l.to);
      const y = lane.agent - 11;
      g.beginPath();
      g.moveTo(a, y - 4); g.lineTo(a, y); g.lineTo(b, y); g.lineTo(b, y + 8);
      g.stroke();
      g.fillText(`${l.ms} ms`, a + 4, y - 7);
    }
    g.strokeStyle = color('--bargein');
    g.fillStyle = color('--bargein');
    g.lineWidth = 2;
    for (const c of lanes.clears) {
      if (c.t < begin) continue;
      const xc = x(c.t);
      g.beginPath();
      g.moveTo(xc, lane.you - 10);
      g.lineTo(xc, lane.agent + laneH);
      g.stroke();
      g.fillText('barge-in', xc + 4, lane.you - 12);
    }
  }

  function updateStats() {
    const s = phone.stats;
    if (!s) return;
    const txt = (id, v) => { const el = $(id); if (el.textContent !== v) el.textContent = v; };
    const onLine = phone.line ? `, line ${phone.line}` : '';
    txt('s-call', phone.callSid ? `${phone.callSid.slice(0, 14)}… (${phone.state}${onLine})` : phone.state);
    txt('s-duration', phone.state === 'live' ? fmtS(now()) : '—');
    txt('s-sent', `${s.framesSent} frames (${(s.framesSent * 0.02).toFixed(1)} s), ${s.messagesSent} messages`);
    txt('s-received', `${(s.bytesReceived / 8000).toFixed(2)} s of audio in ${s.mediaReceived} messages`);
    txt('s-marks', `${s.marksReceived} received, ${s.marksEchoed} echoed`);
    txt('s-clears', `${s.clears} (${Math.round(s.clearedMs)} ms of audio dropped)`);
    const lat = phone.latencies;
    const sorted = [...lat].sort((a, b) => a - b);
    txt('s-latency', lat.length ? `last ${lat[lat.length - 1]} ms, median ${sorted[Math.floor(sorted.length / 2)]} ms`
      : '—');
    const last = phone.serverTurns.length ? phone.serverTurns[phone.serverTurns.length - 1] : null;
    txt('s-turn', last ? `turn ${last.turn}: ${fmtTurn(last)}` : '—');
    txt('s-buffer', `${Math.round(s.bufferedMs)} ms queued (jitter margin ${prebufferMs} ms), ${s.gaps} gaps`);
    const width = (db) => `${Math.round(Math.max(0, Math.min(1, (db + 70) / 64)) * 100)}%`;
    $('mic-meter').style.width = phone.state === 'live' ? width(s.micLevel) : '0%';
    $('agent-meter').style.width = phone.state === 'live' ? width(s.agentLevel) : '0%';
  }

  function frame() {
    if (lanes) {
      const cut = now() - KEEP_S;
      for (const k of ['you', 'agent']) {
        const list = lanes[k];
        let i = 0;
        while (i < list.length && list[i].t < cut) i++;
        if (i) list.splice(0, i);
      }
    }
    drawTimeline();
    updateStats();
    requestAnimationFrame(frame);
  }

  // ---- line picker (the server's lines; each runs its own chain) and the chains in pipelines/ (read-only)

  let listing = null;

  const pickedLine = () => (listing ? listing.lines.find((l) => l.name === $('line').value) || listing.lines[0] : null);

  function listStages(stages) {
    const list = $('stages');
    list.textContent = '';
    for (const st of stages) {
      const li = document.createElement('li');
      const side = document.createElement('span');
      side.className = 'side';
      side.textContent = ` ${st.side}  ${st.audio_in || '—'} → ${st.audio_out || '—'}`;
      li.append(`${st.position}. ${st.name}`, side);
      if (/^(echo|loopback|voicemail|gemini\.live|openai\.realtime|llm\.\w+)$/.test(st.name)) li.className = 'ai';
      list.append(li);
    }
  }

  function showStages() {
    const line = pickedLine();
    if (!line) return;
    const value = $('pipeline').value;
    const ofLine = listing.lines.find((l) => `line:${l.name}` === value); // a line's file outside pipelines/
    const entry = listing.available.find((a) => a.file === value);
    const calls = `Calls from this page go to line ${line.name} (${line.numbers}), which runs ${line.source}.`;
    if (ofLine ? ofLine === line : !entry || entry.lines.includes(line.name)) {
      listStages(line.stages);
      $('pipeline-note').textContent = `${calls} The list is read-only.`;
    } else if (ofLine) {
      listStages(ofLine.stages);
      $('pipeline-note').textContent = `Line ${ofLine.name}'s chain (pick that line to call it). ${calls}`;
    } else {
      $('stages').textContent = '';
      entry.stages.forEach((name, i) => {
        const li = document.createElement('li');
        li.textContent = `${i + 1}. ${name}`;
        $('stages').append(li);
      });
      const served = entry.lines.length ? `line ${entry.lines.join(', ')} runs it (pick it to call it)`
        : `no line runs it: add it to the server file's lines: (or restart with ${entry.serve})`;
      $('pipeline-note').textContent = `Not this line's chain: ${served}. ${calls}`;
    }
  }

  function showLine() {
    // The chains list follows the line picked: its file, or an entry of its own when it is not in pipelines/.
    const line = pickedLine();
    const entry = line && listing.available.find((a) => a.lines.includes(line.name));
    $('pipeline').value = entry ? entry.file : `line:${line ? line.name : ''}`;
    showStages();
  }

  async function loadPipelines() {
    try {
      listing = await api('/phone/pipelines');
    } catch (err) {
      $('pipeline-note').textContent = `Cannot list the chains: ${err.message}`;
      return;
    }
    const lines = $('line');
    lines.textContent = '';
    for (const l of listing.lines) {
      const opt = document.createElement('option');
      opt.value = l.name;
      opt.textContent = `${l.name} (${l.numbers})`;
      opt.selected = l.default;
      lines.append(opt);
    }
    $('line-picker').hidden = listing.lines.length < 2; // one line: nothing to pick
    const select = $('pipeline');
    select.textContent = '';
    for (const a of listing.available) {
      const opt = document.createElement('option');
      opt.value = a.file;
      opt.textContent = a.lines.length ? `${a.name} (line ${a.lines.join(', ')})` : a.name;
      select.append(opt);
    }
    for (const l of listing.lines) { // a line whose file is not in pipelines/
      if (listing.available.some((a) => a.lines.includes(l.name))) continue;
      const opt = document.createElement('option');
      opt.value = `line:${l.name}`;
      opt.textContent = `${l.source} (line ${l.name})`;
      select.prepend(opt);
    }
    showLine();
  }

  // ---- wiring

  resetCall();
  setState('idle', 'press Call and allow the microphone');
  $('call').addEventListener('click', call);
  $('hangup').addEventListener('click', hangUp);
  $('mute').addEventListener('click', () => setMuted(!muted));
  $('pipeline').addEventListener('change', showStages);
  $('line').addEventListener('change', showLine);
  $('keypad').addEventListener('click', (e) => { if (e.target.dataset.key) pressKey(e.target.dataset.key); });
  document.addEventListener('keydown', (e) => {
    if (phone.state === 'live' && !e.repeat && !e.ctrlKey && !e.metaKey && !e.altKey && e.target.tagName !== 'SELECT'
        && pressKey(e.key)) e.preventDefault();
  });
  window.addEventListener('beforeunload', () => { if (phone.state === 'live') hangUp(); });
  Object.assign(phone, { call, hangUp, setMuted, pressKey });
  loadPipelines();
  requestAnimationFrame(frame);
})();
