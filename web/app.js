// The page: loads the engine (wasm) and MNIST, trains with a live chart, predicts a drawn
// digit, exports and imports the checkpoint. window.shadergradTest is the automation hook
// (scripts/web-test.mjs drives it through the DevTools protocol).
import initWasm, * as sg from './pkg/shadergrad_web.js';

const N_TRAIN = 12800;   // a whole number of 128-image batches
const N_TEST = 2000;
const $ = (id) => document.getElementById(id);

// The page's URL may set ?batch=, ?train=, ?test= (sizes) and ?kernels= (a kernel family).
// Each engine call awaits the one before (the engine runs one call at a time).
let chain = Promise.resolve();
function call(f) {
  const p = chain.then(f);
  chain = p.catch(() => {});
  return p;
}

function log(line) {
  $('log').textContent += line + '\n';
  $('log').scrollTop = $('log').scrollHeight;
}

// ---- chart: per-step loss and accuracy, exponentially smoothed
const losses = [], accs = [];
function smooth(xs, a = 0.9) {
  const out = []; let s = xs[0];
  for (const x of xs) { s = a * s + (1 - a) * x; out.push(s); }
  return out;
}
function drawChart() {
  const c = $('chart'), g = c.getContext('2d'), W = c.width, H = c.height, pad = 30;
  g.clearRect(0, 0, W, H);
  g.strokeStyle = '#dde'; g.fillStyle = '#667'; g.font = '11px sans-serif';
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (H - pad) * i / 4;
    g.beginPath(); g.moveTo(pad, y); g.lineTo(W - pad, y); g.stroke();
    g.fillText((2.5 * (1 - i / 4)).toFixed(1), 2, y + 4);
    g.fillText((1 - i / 4).toFixed(2), W - pad + 2, y + 4);
  }
  const n = losses.length;
  g.fillText(`step ${n}`, W / 2 - 20, H - 2);
  if (n < 2) return;
  const line = (ys, max, colour) => {
    g.strokeStyle = colour; g.lineWidth = 1.5; g.beginPath();
    ys.forEach((v, i) => {
      const x = pad + (W - 2 * pad) * i / (n - 1);
      const y = pad / 2 + (H - pad) * (1 - Math.min(v, max) / max);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  };
  line(smooth(losses), 2.5, '#d0453a');
  line(smooth(accs), 1, '#2f6fd0');
}

// ---- training
async function trainSteps(steps) {
  const r = JSON.parse(await call(() => sg.train(steps)));
  losses.push(...r.losses); accs.push(...r.accuracies);
  drawChart();
  $('steprate').textContent = `${r.ms_per_step.toFixed(0)} ms a step (with its loss read back), step ${r.steps}, epoch ${r.epoch + 1}`;
  for (const e of r.epochs) {
    window.shadergradTest.epochs.push(e);
    log(`Epoch ${e.epoch} - ${e.seconds.toFixed(1)}s - ${e.images_per_second.toFixed(0)} img/s - ` +
        `loss: ${e.loss.toFixed(4)} - accuracy: ${e.accuracy.toFixed(4)} - ` +
        `test_loss: ${e.test_loss.toFixed(4)} - test_accuracy: ${e.test_accuracy.toFixed(4)}`);
  }
  return r;
}

let training = false;
async function trainLoop() {
  while (training) {
    try { await trainSteps(5); } catch (e) { log(`error: ${e.message ?? e}`); training = false; }
    await new Promise(requestAnimationFrame);
  }
  $('train').textContent = 'Train';
}

// ---- drawing pad and prediction
const pad = $('pad'), pg = pad.getContext('2d');
function clearPad() { pg.fillStyle = '#000'; pg.fillRect(0, 0, pad.width, pad.height); }
clearPad();
let drawing = false, last = null;
pad.addEventListener('pointerdown', (e) => { drawing = true; last = [e.offsetX, e.offsetY]; pad.setPointerCapture(e.pointerId); });
pad.addEventListener('pointermove', (e) => {
  if (!drawing) return;
  pg.strokeStyle = '#fff'; pg.lineWidth = 22; pg.lineCap = 'round';
  pg.beginPath(); pg.moveTo(...last); pg.lineTo(e.offsetX, e.offsetY); pg.stroke();
  last = [e.offsetX, e.offsetY];
});
pad.addEventListener('pointerup', () => { drawing = false; predictPad().catch((e) => log(`error: ${e.message ?? e}`)); });

function padGrey() {
  const d = pg.getImageData(0, 0, pad.width, pad.height).data;
  const grey = new Uint8Array(pad.width * pad.height);
  for (let i = 0; i < grey.length; i++) grey[i] = d[4 * i];
  return grey;
}

// The drawn-digit path: the pad's pixels -> MNIST's 28x28 framing -> the CNN.
async function predictPad() {
  const digit = sg.mnistFromDrawing(pad.width, pad.height, padGrey());
  const probs = Array.from(await call(() => sg.predict(digit)));
  showProbs(probs);
  return probs;
}

function showProbs(probs) {
  const best = probs.indexOf(Math.max(...probs));
  $('guess').textContent = `Prediction: ${best} (${(100 * probs[best]).toFixed(1)}%)`;
  $('bars').innerHTML = probs.map((p, i) =>
    `<div class="${i === best ? 'best' : ''}"><b>${i}</b><span class="bar" style="width:${(200 * p).toFixed(1)}px"></span>${(100 * p).toFixed(1)}%</div>`).join('');
}

// Paint a 28x28 MNIST image onto the pad (10x), as if drawn.
function paintDigit(pixels) {
  clearPad();
  const s = pad.width / 28;
  for (let i = 0; i < 784; i++) {
    const v = pixels[i];
    if (!v) continue;
    pg.fillStyle = `rgb(${v},${v},${v})`;
    pg.fillRect((i % 28) * s, Math.floor(i / 28) * s, s, s);
  }
}

// ---- checkpoints and kernel checks
async function exportCheckpoint(download = true) {
  const bytes = await call(() => sg.exportCheckpoint());
  if (download) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
    a.download = 'shadergrad-cnn.safetensors';
    a.click();
  }
  log(`exported ${bytes.length} bytes (safetensors; shadergrad evaluate --checkpoint reads it)`);
  return bytes;
}

async function importCheckpoint(bytes) {
  const r = JSON.parse(await call(() => sg.importCheckpoint(bytes)));
  log(`imported a checkpoint: epoch ${r.epoch}, step ${r.steps}`);
  return r;
}

async function kernelTests() {
  const results = JSON.parse(await call(() => sg.kernelTests()));
  const failed = results.filter((r) => !r.ok);
  log(`kernel checks: ${results.length - failed.length} passed, ${failed.length} failed`);
  for (const f of failed) log(`  FAILED ${f.name}: ${f.detail}`);
  return results;
}

// ---- start
async function fetchBytes(name) {
  const r = await fetch(`data/${name}`);
  if (!r.ok) throw new Error(`data/${name}: HTTP ${r.status} (run scripts/build-web.sh)`);
  return new Uint8Array(await r.arrayBuffer());
}

async function main() {
  await initWasm();
  if (!navigator.gpu) throw new Error('this browser has no WebGPU (navigator.gpu is undefined)');
  // ?kernels=gpu|window|subgroup|portable forces a kernel family (the adapter's default otherwise);
  // ?batch=N trains on N images a step (default 128).
  const q = new URLSearchParams(location.search);
  const info = JSON.parse(await call(() => sg.start(q.get('kernels') ?? '', Number(q.get('batch') ?? 0))));
  const a = (await navigator.gpu.requestAdapter())?.info ?? {};
  info.browser_adapter = [a.vendor, a.architecture, a.description].filter(Boolean).join(' ');
  $('status').textContent = `Adapter: ${info.browser_adapter || 'WebGPU'}${a.isFallbackAdapter ? ' (software)' : ''} - kernels: ${info.family}`;
  const files = await Promise.all(['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
    't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'].map(fetchBytes));
  const n = (key, dflt) => Number(q.get(key) ?? dflt);   // ?train=N&test=N: subset sizes
  const d = JSON.parse(await call(() => sg.loadMnist(...files, n('train', N_TRAIN), n('test', N_TEST))));
  $('batch').textContent = info.batch;
  $('ntrain').textContent = d.n_train.toLocaleString('en');
  $('ntest').textContent = d.n_test.toLocaleString('en');
  log(`MNIST: ${d.n_train} training images (${d.steps_per_epoch} steps of ${info.batch} an epoch), ${d.n_test} test images`);
  for (const id of ['train', 'checks', 'export', 'import']) $(id).disabled = false;
  $('train').onclick = () => {
    training = !training;
    $('train').textContent = training ? 'Pause' : 'Train';
    if (training) trainLoop();
  };
  $('checks').onclick = () => kernelTests().catch((e) => log(`error: ${e.message ?? e}`));
  $('export').onclick = () => exportCheckpoint().catch((e) => log(`error: ${e.message ?? e}`));
  $('import').onchange = async (e) => {
    const f = e.target.files[0];
    if (f) importCheckpoint(new Uint8Array(await f.arrayBuffer())).catch((err) => log(`error: ${err.message ?? err}`));
  };
  $('clear').onclick = clearPad;
  return info;
}

const ready = main();
ready.catch((e) => { $('status').textContent = `Error: ${e.message ?? e}`; });

window.shadergradTest = {
  ready,                                   // resolves to the adapter info once data is loaded
  train: async (steps) => (await trainSteps(steps)).losses,
  epochs: [],
  predict: async (pixels) => Array.from(await call(() => sg.predict(Uint8Array.from(pixels)))),
  // Paint a 28x28 image on the drawing pad and predict it through the pad's path.
  predictDrawn: async (pixels) => { paintDigit(pixels); return predictPad(); },
  testImage: (i) => JSON.parse(sg.testImage(i)),
  evaluate: async () => JSON.parse(await call(() => sg.evaluate())),
  timeSteps: (steps) => call(() => sg.timeSteps(steps)),
  profileStep: async (repeats) => JSON.parse(await call(() => sg.profileStep(repeats))),
  kernelTests,
  // Export the checkpoint and keep it as base64 (its length returned): the test reads it
  // in slices with checkpointSlice(start, end), to check it with the CLI.
  checkpointBase64: async () => {
    const bytes = await exportCheckpoint(false);
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    window.shadergradTest.exported = btoa(s);
    return window.shadergradTest.exported.length;
  },
  checkpointSlice: (start, end) => window.shadergradTest.exported.slice(start, end),
  // Export, then import what was exported: the predictions of `pixels` before and after.
  checkpointRoundTrip: async (pixels) => {
    const p = () => call(() => sg.predict(Uint8Array.from(pixels))).then(Array.from);
    const before = await p();
    const bytes = await exportCheckpoint(false);
    const imported = await importCheckpoint(bytes);
    return { bytes: bytes.length, imported, before, after: await p() };
  },
};
