// The browser test: serves web/ (built by scripts/build-web.sh) on localhost, starts
// headless Chromium with WebGPU on SwiftShader (its CPU Vulkan), and drives the page through
// the DevTools protocol: the in-page kernel checks (GPU vs CPU reference), one epoch of a few
// hundred training steps (the loss must fall; then the test set's accuracy), a known MNIST
// test image through predict() and through the drawing pad, a checkpoint export/import
// round trip, and a screenshot.
// Run with: node --experimental-websocket scripts/web-test.mjs   (Node 20; 22 needs no flag)
// Env: CHROMIUM (default /usr/bin/chromium), WEB_TEST_STEPS (default 200), WEB_TEST_BATCH
// (images a step, default 16: SwiftShader is a CPU), WEB_TEST_TRAIN (training images,
// default steps x batch: one epoch), WEB_TEST_KERNELS (force a kernel family),
// WEB_TEST_TIMING_ROUNDS (rounds of 10 timed steps, default 1), WEB_TEST_PROFILE=1 (time
// each kernel of a step), WEB_TEST_SAVE_CHECKPOINT=FILE (write the page's checkpoint),
// WEB_TEST_OUT (default target/web-test).
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, normalize, resolve } from 'node:path';

const root = resolve(new URL('..', import.meta.url).pathname);
const web = join(root, 'web');
const out = resolve(process.env.WEB_TEST_OUT ?? join(root, 'target/web-test'));
const chromium = process.env.CHROMIUM ?? '/usr/bin/chromium';
const steps = Number(process.env.WEB_TEST_STEPS ?? 200);
const batch = Number(process.env.WEB_TEST_BATCH ?? 16);
const kernels = process.env.WEB_TEST_KERNELS ?? '';   // force a kernel family (?kernels=)
const started = Date.now();
const secs = () => ((Date.now() - started) / 1000).toFixed(1);
let passed = 0, failed = 0;

function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  ok ? passed++ : failed++;
}
function die(msg) {
  console.error(`web-test: ${msg}`);
  process.exit(1);
}

if (typeof WebSocket === 'undefined') die('no WebSocket in this Node; run node --experimental-websocket (Node 20) or Node 22+');
if (!existsSync(chromium)) die(`Chromium not found at ${chromium}: apt-get install chromium (or set CHROMIUM)`);
for (const f of ['pkg/shadergrad_web_bg.wasm', 'data/t10k-images-idx3-ubyte.gz'])
  if (!existsSync(join(web, f))) die(`web/${f} is missing: run scripts/build-web.sh first`);
mkdirSync(out, { recursive: true });

// ---- a static server for web/
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.gz': 'application/octet-stream' };
const server = createServer((req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
  const file = join(web, path.endsWith('/') ? join(path, 'index.html') : path);
  if (!file.startsWith(web) || !existsSync(file)) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' });
  res.end(readFileSync(file));
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
// 3,200 training images: the 200 steps of 16 are one epoch, whose end evaluates the test set.
const train = Number(process.env.WEB_TEST_TRAIN ?? steps * batch);
const url = `http://127.0.0.1:${server.address().port}/?batch=${batch}&train=${train}&test=1000` +
  (kernels ? `&kernels=${kernels}` : '');

// ---- headless Chromium, WebGPU on SwiftShader
const profile = mkdtempSync(join(tmpdir(), 'shadergrad-chromium-'));
const flags = [
  '--headless', '--no-sandbox', '--no-first-run', '--disable-quic', '--disable-sync',
  '--disable-background-networking', '--disable-component-update', '--disable-default-apps',
  `--user-data-dir=${profile}`, '--remote-debugging-port=0', '--window-size=1200,860',
  '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader', '--enable-unsafe-swiftshader', 'about:blank',
];
const browser = spawn(chromium, flags, { stdio: ['ignore', 'ignore', 'pipe'] });
const chromeLog = createWriteStream(join(out, 'chromium.log'));
let cleaned = false;
function cleanup() {
  if (cleaned) return;
  cleaned = true;
  browser.kill('SIGTERM');
  server.close();
  try { rmSync(profile, { recursive: true, force: true }); } catch {}
}
process.on('exit', cleanup);
const devtools = await new Promise((ok, fail) => {
  let buf = '';
  const timer = setTimeout(() => fail(new Error('Chromium printed no DevTools address in 60 s')), 60000);
  browser.stderr.on('data', (d) => {
    chromeLog.write(d);
    buf += d;
    const m = buf.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) { clearTimeout(timer); ok(m[1]); }
  });
  browser.on('exit', (code) => fail(new Error(`Chromium exited (${code}) at start; see ${join(out, 'chromium.log')}`)));
}).catch((e) => { cleanup(); die(e.message); });

// ---- DevTools protocol over the page's WebSocket
const port = new URL(devtools).port;
const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
const page = targets.find((t) => t.type === 'page');
const ws = new WebSocket(page.webSocketDebuggerUrl);
await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error('DevTools socket')); });
let nextId = 1;
const pending = new Map();
const consoleLines = [];
ws.onmessage = (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.id && pending.has(msg.id)) {
    const { ok, fail } = pending.get(msg.id);
    pending.delete(msg.id);
    msg.error ? fail(new Error(msg.error.message)) : ok(msg.result);
  } else if (msg.method === 'Runtime.consoleAPICalled') {
    consoleLines.push(`console.${msg.params.type}: ${msg.params.args.map((a) => a.value ?? a.description).join(' ')}`);
  } else if (msg.method === 'Runtime.exceptionThrown') {
    const d = msg.params.exceptionDetails;
    consoleLines.push(`exception: ${d.exception?.description ?? d.text}`);
  }
};
const send = (method, params = {}) => new Promise((ok, fail) => {
  const id = nextId++;
  pending.set(id, { ok, fail });
  ws.send(JSON.stringify({ id, method, params }));
});

// Evaluate `expr` in the page (awaiting a promise), its value as JSON.
async function page_eval(expr, timeoutMs = 300000) {
  const r = await Promise.race([
    send('Runtime.evaluate', { expression: expr, awaitPromise: true, returnByValue: true }),
    new Promise((_, fail) => setTimeout(() => fail(new Error(`timed out after ${timeoutMs / 1000} s: ${expr}`)), timeoutMs)),
  ]);
  if (r.exceptionDetails) throw new Error(`${expr}: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
  return r.result.value;
}

const argmax = (v) => v.indexOf(Math.max(...v));
const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length;
let exitCode = 0;
try {
  await send('Runtime.enable');
  await send('Page.enable');
  await send('Page.navigate', { url });
  for (let i = 0; ; i++) {
    if (await page_eval('typeof window.shadergradTest !== "undefined"').catch(() => false)) break;
    if (i > 600) throw new Error('the page never defined window.shadergradTest (did app.js load?)');
    await new Promise((r) => setTimeout(r, 100));
  }
  const hasGpu = await page_eval('!!navigator.gpu && navigator.gpu.requestAdapter().then((a) => !!a)');
  if (!hasGpu) throw new Error('Chromium has no WebGPU adapter: SwiftShader (libvk_swiftshader.so, shipped in Debian\'s chromium) missing or WebGPU disabled');
  const info = await page_eval('window.shadergradTest.ready');
  console.log(`[${secs()} s] page ready: ${info.browser_adapter} (${info.adapter}); kernels: ${info.family}; subgroup sizes ${info.subgroup_sizes}; ${info.features}`);

  const results = await page_eval('window.shadergradTest.kernelTests()');
  const bad = results.filter((r) => !r.ok);
  for (const b of bad) console.log(`     ${b.name}: ${b.detail}`);
  check(results.length > 0 && bad.length === 0, `kernel checks in the page: ${results.length - bad.length} of ${results.length} match the CPU reference [${secs()} s]`);

  const losses = [];
  const chunk = 20;
  for (let done = 0; done < steps; done += chunk) {
    losses.push(...await page_eval(`window.shadergradTest.train(${Math.min(chunk, steps - done)})`));
    console.log(`     step ${losses.length}: loss ${losses.at(-1).toFixed(3)} [${secs()} s]`);
  }
  const first = mean(losses.slice(0, 10)), last = mean(losses.slice(-20));
  check(losses.length === steps && losses.every(Number.isFinite) && last < 0.5 * first,
    `training: ${losses.length} steps, mean loss of the first 10 ${first.toFixed(3)} -> last 20 ${last.toFixed(3)} [${secs()} s]`);

  const epochs = await page_eval('window.shadergradTest.epochs');
  const acc = epochs[0]?.test_accuracy ?? 0;
  check(epochs.length === 1 && acc > 0.85, `one epoch, then the test set: test_accuracy ${acc.toFixed(4)} (of 1,000 images) [${secs()} s]`);

  for (let round = 0; round < Number(process.env.WEB_TEST_TIMING_ROUNDS ?? 1); round++) {
    const ms = await page_eval('window.shadergradTest.timeSteps(10)');
    console.log(`     ${ms.toFixed(1)} ms per training step (batch ${info.batch}, 10 steps, no readback between them)`);
  }

  if (process.env.WEB_TEST_PROFILE) {
    const rows = await page_eval('window.shadergradTest.profileStep(1)');
    for (const [name, t, wg] of rows) console.log(`     ${t.toFixed(1).padStart(8)} ms  ${name} ${wg}`);
    console.log(`     ${rows.reduce((a, r) => a + r[1], 0).toFixed(1)} ms in all`);
  }
  const img = await page_eval('window.shadergradTest.testImage(0)');
  const probs = await page_eval(`window.shadergradTest.predict(${JSON.stringify(img.pixels)})`);
  check(probs.length === 10 && argmax(probs) === img.label && Math.abs(mean(probs) * 10 - 1) < 1e-4,
    `predict(test image 0, a ${img.label}): ${argmax(probs)} with p=${Math.max(...probs).toFixed(3)}`);
  const drawn = await page_eval(`window.shadergradTest.predictDrawn(${JSON.stringify(img.pixels)})`);
  check(argmax(drawn) === img.label, `the drawing pad's path on test image 0: ${argmax(drawn)} with p=${Math.max(...drawn).toFixed(3)}`);

  const rt = await page_eval(`window.shadergradTest.checkpointRoundTrip(${JSON.stringify(img.pixels)})`);
  check(rt.bytes > 693962 * 4 && JSON.stringify(rt.before) === JSON.stringify(rt.after),
    `checkpoint export (${rt.bytes} bytes) and import: the same predictions after`);

  if (process.env.WEB_TEST_SAVE_CHECKPOINT) {
    const n = await page_eval('window.shadergradTest.checkpointBase64()');
    let b64 = '';
    for (let i = 0; i < n; i += 1 << 20)
      b64 += await page_eval(`window.shadergradTest.checkpointSlice(${i}, ${i + (1 << 20)})`);
    writeFileSync(process.env.WEB_TEST_SAVE_CHECKPOINT, Buffer.from(b64, 'base64'));
    console.log(`     checkpoint: ${process.env.WEB_TEST_SAVE_CHECKPOINT}`);
  }
  const shot = await send('Page.captureScreenshot', { format: 'png' });
  writeFileSync(join(out, 'screenshot.png'), Buffer.from(shot.data, 'base64'));
  console.log(`     screenshot: ${join(out, 'screenshot.png')}`);
} catch (e) {
  console.error(`web-test: ${e.message}`);
  failed++;
  exitCode = 1;
} finally {
  if (consoleLines.length) writeFileSync(join(out, 'console.log'), consoleLines.join('\n') + '\n');
  const errors = consoleLines.filter((l) => /error|exception|panicked/i.test(l));
  for (const l of errors.slice(0, 20)) console.log(`     page ${l}`);
  console.log(`web-test: ${secs()} s`);
  console.log(`${passed} passed, ${failed} failed`);
  ws.close();
  cleanup();
  process.exit(failed ? 1 : exitCode);
}
