// Audio side of the softphone, on the audio rendering thread (AudioWorkletGlobalScope).
//
// "mulaw-capture":  microphone at the context rate → low-pass (6th-order Butterworth, 3.4 kHz)
//                   → 8 kHz (linear interpolation) → 160-sample frames → G.711 μ-law bytes.
// "mulaw-playback": a ring buffer of 8 kHz samples (decoded μ-law from the server) played at the
//                   context rate; marks are released when the read position passes the point where
//                   they were queued, exactly as Twilio echoes them; "clear" drops what is unplayed.
//
// Both processors stamp what they report with `currentTime`, the clock of the audio graph, so the page
// can measure latencies on one clock.

const RATE = 8000;
const FRAME = 160; // 20 ms at 8 kHz

// ---- G.711 μ-law (protocols.md §E)

const BIAS = 0x84;
const CLIP = 32635;

function linearToMulaw(sample) {
  let s = sample;
  const sign = s < 0 ? 0x80 : 0;
  if (sign) s = -s;
  if (s > CLIP) s = CLIP;
  s += BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; exponent--, mask >>= 1) { /* find segment */ }
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

// ---- filters

function lowpass(cutoff, rate, q) {
  // RBJ cookbook biquad, direct form I state.
  const w = (2 * Math.PI * cutoff) / rate;
  const alpha = Math.sin(w) / (2 * q);
  const cos = Math.cos(w);
  const a0 = 1 + alpha;
  return {
    b0: (1 - cos) / 2 / a0, b1: (1 - cos) / a0, b2: (1 - cos) / 2 / a0,
    a1: (-2 * cos) / a0, a2: (1 - alpha) / a0,
    x1: 0, x2: 0, y1: 0, y2: 0,
  };
}

function runBiquad(f, x) {
  const y = f.b0 * x + f.b1 * f.x1 + f.b2 * f.x2 - f.a1 * f.y1 - f.a2 * f.y2;
  f.x2 = f.x1; f.x1 = x; f.y2 = f.y1; f.y1 = y;
  return y;
}

function dbfs(sumSquares, n) {
  const rms = Math.sqrt(sumSquares / Math.max(n, 1));
  return rms > 1e-6 ? Math.max(-100, 20 * Math.log10(rms)) : -100;
}

// ---- capture

class MulawCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / RATE; // input samples per 8 kHz sample
    // 6th-order Butterworth as three biquads (Q of each pole pair), well below the 4 kHz Nyquist of 8 kHz.
    this.filters = sampleRate > RATE ? [0.5176, 0.7071, 1.9319].map((q) => lowpass(3400, sampleRate, q)) : [];
    this.filtered = new Float32Array(128);
    this.t = 0; // position of the next 8 kHz sample, in input samples relative to this block (≥ -1)
    this.prev = 0; // last filtered sample of the previous block (index -1)
    this.frame = new Uint8Array(FRAME);
    this.n = 0;
    this.sumSquares = 0;
    this.muted = false;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'mute') this.muted = !!e.data.muted;
    };
  }

  push(value) {
    const v = this.muted ? 0 : Math.max(-1, Math.min(1, value));
    this.sumSquares += v * v;
    this.frame[this.n++] = linearToMulaw(Math.round(v * 32767));
    if (this.n === FRAME) {
      const bytes = this.frame;
      this.port.postMessage({ type: 'frame', bytes, level: dbfs(this.sumSquares, FRAME), t: currentTime }, [bytes.buffer]);
      this.frame = new Uint8Array(FRAME);
      this.n = 0;
      this.sumSquares = 0;
    }
  }

  process(inputs) {
    const channels = inputs[0] || [];
    const size = channels.length ? channels[0].length : 128; // no track (yet): send silence, like a phone
    if (this.filtered.length < size) this.filtered = new Float32Array(size);
    const x = this.filtered;
    for (let i = 0; i < size; i++) {
      let v = 0;
      for (let c = 0; c < channels.length; c++) v += channels[c][i];
      if (channels.length > 1) v /= channels.length;
      for (const f of this.filters) v = runBiquad(f, v);
      x[i] = v;
    }
    let t = this.t;
    while (t <= size - 1) {
      const i = Math.floor(t);
      const frac = t - i;
      const a = i < 0 ? this.prev : x[i];
      const b = x[i + 1 < size ? i + 1 : size - 1];
      this.push(a + (b - a) * frac);
      t += this.step;
    }
    this.t = t - size;
    this.prev = x[size - 1];
    return true;
  }
}

// ---- playback

class MulawPlayback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.prebuffer = Math.round(((opts.prebufferMs ?? 60) / 1000) * RATE); // jitter margin before a reply starts
    this.step = RATE / sampleRate; // 8 kHz samples per output sample
    this.cap = RATE * 30;
    this.ring = new Float32Array(this.cap);
    this.written = 0; // 8 kHz samples ever queued
    this.read = 0; // fractional read position, same count
    this.marks = []; // {name, at}: released once `read` reaches `at`
    this.state = 'idle'; // idle → priming → playing → idle (drained) …
    this.primedFor = 0;
    this.tickEvery = Math.round(sampleRate * 0.02);
    this.tickN = 0;
    this.tickSum = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'audio') {
      this.enqueue(msg.samples);
    } else if (msg.type === 'mark') {
      this.marks.push({ name: msg.name, at: this.written });
    } else if (msg.type === 'clear') {
      const dropped = Math.max(0, this.written - Math.floor(this.read));
      this.read = this.written;
      const pending = this.marks.map((m) => m.name);
      this.marks = [];
      this.port.postMessage({ type: 'cleared', droppedMs: dropped / 8, marks: pending, t: currentTime });
      if (this.state !== 'idle') this.setState('idle');
    }
  }

  enqueue(samples) {
    const queued = this.written - Math.floor(this.read);
    if (queued + samples.length > this.cap) this.grow(queued + samples.length);
    for (let i = 0; i < samples.length; i++) this.ring[(this.written + i) % this.cap] = samples[i];
    this.written += samples.length;
    if (this.state === 'idle') {
      this.state = 'priming';
      this.primedFor = 0;
    }
  }

  grow(needed) {
    let cap = this.cap;
    while (cap < needed + RATE) cap *= 2;
    const ring = new Float32Array(cap);
    for (let p = Math.floor(this.read); p < this.written; p++) ring[p % cap] = this.ring[p % this.cap];
    this.ring = ring;
    this.cap = cap;
  }

  setState(state) {
    this.state = state;
    this.port.postMessage({ type: state === 'playing' ? 'playing' : 'drained', t: currentTime });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    if (this.state === 'priming') {
      this.primedFor += n * this.step;
      if (this.written - this.read >= this.prebuffer || this.primedFor >= this.prebuffer) this.setState('playing');
    }
    for (let j = 0; j < n; j++) {
      let v = 0;
      if (this.state === 'playing') {
        if (this.read < this.written) {
          const i = Math.floor(this.read);
          const frac = this.read - i;
          const a = this.ring[i % this.cap];
          const b = i + 1 < this.written ? this.ring[(i + 1) % this.cap] : a;
          v = a + (b - a) * frac;
          this.read += this.step;
        }
        if (this.read >= this.written) {
          this.read = this.written;
          this.setState('idle');
        }
      }
      out[j] = v;
      this.tickSum += v * v;
      if (++this.tickN === this.tickEvery) {
        this.port.postMessage({
          type: 'tick', t: currentTime, level: dbfs(this.tickSum, this.tickN), state: this.state,
          bufferedMs: (this.written - this.read) / 8, playedSamples: Math.floor(this.read),
        });
        this.tickN = 0;
        this.tickSum = 0;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    while (this.marks.length && this.marks[0].at <= this.read) {
      this.port.postMessage({ type: 'played', name: this.marks.shift().name, t: currentTime });
    }
    return true;
  }
}

registerProcessor('mulaw-capture', MulawCapture);
registerProcessor('mulaw-playback', MulawPlayback);
