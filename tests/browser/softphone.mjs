// Drives Debian's headless chromium (never a downloaded browser) through one softphone call.
//
//   node softphone.mjs '{"url": "...", "wav": "...", "screenshot": "...", "out": "...", "timeoutMs": 45000}'
//
// The fake microphone plays `wav`. The script clicks Call, takes `screenshot` once the page has
// recorded a barge-in and the reply after it, waits until the line is quiet (nothing queued, every mark
// echoed, no audio for a second), prints "QUIET" and waits for a line on stdin (the test checks the
// server's state meanwhile), hangs up, and writes window.softphone plus diagnostics to `out`.
// With "line": NAME it picks that line first (the server must list it in the page's line picker).
// With "firstReplyOnly": true it hangs up once the first reply has brought `replyBytes` of audio (default 8000,
// one second of μ-law; how fast it arrives depends on the box's load) and records the page's address.
// With "keys": "12" (and "typed": "#") it clicks those keypad buttons once the call is live, then types `typed` on
// the keyboard, waits for the reply to them, and records what the page shows as the keys pressed (`keysShown`).
// With "transfer": true it waits for the server to end the call with a transfer (the AI's), and records the
// page's event list (`eventsShown`) and status line (`message`).
// Progress goes to stdout, one line per step, so a failure shows how far the call got.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const opts = JSON.parse(process.argv[2]);
const executablePath = opts.chromium || '/usr/bin/chromium';
const timeoutMs = opts.timeoutMs || 45000;
const started = Date.now();
const elapsed = () => ((Date.now() - started) / 1000).toFixed(2);
const say = (line) => console.log(`${line}  [${elapsed()} s]`);
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const userDataDir = mkdtempSync(join(tmpdir(), 'softphone-chromium-'));
const args = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
  `--use-file-for-fake-audio-capture=${opts.wav}`,
  '--autoplay-policy=no-user-gesture-required',
];
const diagnostics = { console: [], pageErrors: [], timeline: [] };
let context;
let page;

async function state() {
  return page.evaluate(() => {
    const p = window.softphone;
    return {
      state: p.state, error: p.error, closeCode: p.closeCode, stats: p.stats, latencies: p.latencies,
      bargeIns: p.bargeIns.length, received: p.receivedLevels.length,
    };
  });
}

async function waitFor(what, predicate, ms = timeoutMs) {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await state();
    if (s.state === 'error') throw new Error(`page error while waiting for ${what}: ${s.error}`);
    if (predicate(s)) return s;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function dump(status, extra = {}) {
  let data = null;
  try {
    data = await page.evaluate(() => JSON.parse(JSON.stringify(window.softphone)));
  } catch (err) {
    diagnostics.pageErrors.push(`could not read window.softphone: ${err}`);
  }
  writeFileSync(opts.out, JSON.stringify({ status, page: data, diagnostics, seconds: Number(elapsed()), ...extra }));
}

async function run() {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath, headless: true, args, viewport: { width: 1280, height: 860 }, timeout: 20000,
  });
  say(`chromium ${context.browser()?.version() ?? ''} up`);
  page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') diagnostics.console.push(`${m.type()}: ${m.text()}`); });
  page.on('pageerror', (e) => diagnostics.pageErrors.push(String(e)));
  await page.goto(opts.url, { waitUntil: 'load' });
  await page.waitForFunction(() => window.softphone && document.querySelector('#pipeline option'));
  say('page loaded');
  const lineOptions = await page.$$eval('#line option', (os) => os.map((o) => o.value));
  const linePicker = await page.isVisible('#line');
  if (opts.line) {
    await page.selectOption('#line', opts.line);
    say(`picked line ${opts.line} of ${lineOptions.join(', ')}`);
  }
  await page.click('#call');
  let s = await waitFor('the call to go live', (x) => x.state === 'live', 10000);
  say(`live, audio context at ${await page.evaluate(() => window.softphone.audioRate)} Hz`);
  if (opts.keys) {
    for (const key of opts.keys) {
      await page.click(`#keypad button[data-key="${key}"]`);
      await page.waitForTimeout(100);
    }
    if (opts.typed) await page.keyboard.press(opts.typed);
    say(`pressed ${opts.keys}${opts.typed || ''}`);
    s = await waitFor('the reply to the keys', (x) => x.stats.replies >= 1);
    say('reply to the keys');
    const keysShown = await page.textContent('#keys');
    await page.evaluate(() => window.softphone.hangUp());
    await page.waitForTimeout(300);
    await dump('ok', { keysShown });
    return;
  }
  if (opts.transfer) { // the AI transfers the call: the page shows it once the server has ended the call
    await page.waitForFunction(() => window.softphone.state !== 'live' && window.softphone.transfer,
      null, { timeout: timeoutMs, polling: 100 });
    say('transfer shown');
    const eventsShown = await page.$$eval('#events li', (ls) => ls.map((l) => l.textContent));
    const message = await page.textContent('#message');
    await dump('ok', { eventsShown, message });
    return;
  }
  s = await waitFor('the first reply', (x) => x.latencies.length >= 1);
  say(`first reply after ${s.latencies[0]} ms`);
  if (opts.firstReplyOnly) {
    const replyBytes = opts.replyBytes ?? 8000;
    s = await waitFor(`${replyBytes} bytes of reply audio`, (x) => x.stats.bytesReceived >= replyBytes);
    say(`${s.stats.bytesReceived} bytes of reply audio`);
    const address = page.url();
    await page.evaluate(() => window.softphone.hangUp());
    await page.waitForTimeout(300);
    const stagesShown = await page.$$eval('#stages li', (ls) => ls.map((l) => l.textContent));
    await dump('ok', { address, lineOptions, linePicker, stagesShown });
    return;
  }
  s = await waitFor('a barge-in', (x) => x.stats.clears >= 1);
  say('barge-in (clear) recorded');
  const repliesBefore = s.stats.replies;
  s = await waitFor('the reply after the barge-in', (x) => x.stats.replies > repliesBefore);
  say(`reply after the barge-in, ${s.latencies[s.latencies.length - 1]} ms after the caller stopped`);
  await new Promise((r) => setTimeout(r, 700));
  if (opts.screenshot) {
    await page.screenshot({ path: opts.screenshot, fullPage: true });
    say(`screenshot ${opts.screenshot}`);
  }
  let lastBytes = -1;
  let steadySince = Date.now();
  s = await waitFor('a quiet line', (x) => {
    if (x.stats.bytesReceived !== lastBytes) {
      lastBytes = x.stats.bytesReceived;
      steadySince = Date.now();
    }
    return x.state === 'live' && !x.stats.playing && x.stats.bufferedMs === 0
      && x.stats.marksEchoed === x.stats.marksReceived && Date.now() - steadySince >= 1000;
  });
  say(`QUIET ${JSON.stringify(s.stats)}`);
  await stdinLines.next(); // the test has looked at the server
  await page.evaluate(() => window.softphone.hangUp());
  await page.waitForTimeout(300);
  await dump('ok');
}

let exitCode = 0;
try {
  await run();
  say('DONE');
} catch (err) {
  exitCode = 2;
  say(`FAILED ${err && err.stack ? err.stack : err}`);
  if (page) {
    try { await page.screenshot({ path: `${opts.out}.failure.png` }); } catch { /* page gone */ }
    await dump('failed', { failure: String(err) });
  } else {
    writeFileSync(opts.out, JSON.stringify({ status: 'failed', failure: String(err), diagnostics }));
  }
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(exitCode);
