// The demo page: paint class ids on a canvas at the model's resolution; when a stroke ends the
// exported generator runs in this browser (LiteRT.js or onnxruntime-web, per demo.json) and the
// output canvas shows its image. `window.demo` exposes the state for tests and benchmarks.

const cfg = await (await fetch('demo.json')).json();
const H = cfg.height, W = cfg.width, C = cfg.num_classes;
const ERASE = cfg.dontcare ?? 0;  // the eraser paints the don't-care class where there is one
const $ = (id) => document.getElementById(id);
const demo = window.demo = { config: cfg, ready: false, runs: 0, last: null, error: null };

let label = new Int32Array(H * W);
// What the label map shows, for its caption: where it came from, whether it was edited since, and
// whether it is the page's start (`initial`: the caption then says how to start blank).
let map = { source: 'blank', edited: false, initial: false };
let cls = Math.min(1, C - 1), tool = 'brush', size = 4;
const undoStack = [], redoStack = [];
let styleSeed = 1;

// ---- display ----------------------------------------------------------------------------------
const scale = Math.max(1, Math.floor(448 / Math.max(W, H)));
for (const id of ['label', 'output']) {
  const c = $(id);
  c.width = W; c.height = H;
  c.style.width = `${W * scale}px`; c.style.height = `${H * scale}px`;
}
const labelCtx = $('label').getContext('2d', { willReadFrequently: true });
const outCtx = $('output').getContext('2d', { willReadFrequently: true });

function drawLabel() {
  const img = labelCtx.createImageData(W, H);
  for (let i = 0; i < H * W; i++) {
    const col = cfg.classes[label[i]].colour;
    img.data[4 * i] = col[0]; img.data[4 * i + 1] = col[1]; img.data[4 * i + 2] = col[2]; img.data[4 * i + 3] = 255;
  }
  labelCtx.putImageData(img, 0, 0);
}

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
}

const className = (i) => `${i} ${cfg.classes[i].name}`;
function caption() {
  const hint = map.initial && !map.edited ? ' (paint over it, or Clear to start blank)' : '';
  $('source').textContent = `label map: ${map.source}${map.edited ? ', edited' : ''}${hint}`;
  $('current').textContent = tool === 'eraser' ? `erasing (paints ${className(ERASE)})`
    : tool === 'fill' ? `filling with ${className(cls)}` : `painting ${className(cls)}`;
}

// ---- palette ----------------------------------------------------------------------------------
function buildPalette() {
  const ul = $('palette');
  cfg.classes.forEach((c, i) => {
    const li = document.createElement('li');
    li.dataset.cls = i;
    li.innerHTML = `<span class="swatch" style="background: rgb(${c.colour})"></span><span>${i} ${c.name}</span>`;
    li.onclick = () => selectClass(i);
    ul.appendChild(li);
  });
  $('filter').oninput = () => {
    const q = $('filter').value.toLowerCase();
    for (const li of ul.children) li.hidden = q && !cfg.classes[li.dataset.cls].name.toLowerCase().includes(q);
  };
  selectClass(cls);
}

function selectClass(i) {
  cls = i;
  for (const li of $('palette').children) li.classList.toggle('active', +li.dataset.cls === i);
  if (tool === 'eraser') setTool('brush');
  else caption();
}

function setTool(t) {
  tool = t;
  for (const b of document.querySelectorAll('.tool')) b.classList.toggle('active', b.dataset.tool === t);
  caption();
}

// ---- editing ----------------------------------------------------------------------------------
const state = () => ({ label: label.slice(), map: { ...map } });
function snapshot() {
  undoStack.push(state());
  if (undoStack.length > 100) undoStack.shift();
  redoStack.length = 0;
}
function edit() {  // before a stroke or fill
  snapshot();
  map.edited = true;
  caption();
}

function stamp(cx, cy, value) {
  const half = (size - 1) / 2, r = Math.ceil(half);
  for (let dy = -r; dy <= r; dy++) {
    for (let dx = -r; dx <= r; dx++) {
      if (dx * dx + dy * dy > half * half + half) continue;  // a disc, one pixel at size 1
      const x = cx + dx, y = cy + dy;
      if (x >= 0 && x < W && y >= 0 && y < H) label[y * W + x] = value;
    }
  }
}

function line(x0, y0, x1, y1, value) {
  const n = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
  for (let i = 0; i <= n; i++) stamp(Math.round(x0 + (x1 - x0) * i / n), Math.round(y0 + (y1 - y0) * i / n), value);
}

function fill(x, y, value) {
  const target = label[y * W + x];
  if (target === value) return;
  const stack = [y * W + x];
  label[y * W + x] = value;
  while (stack.length) {
    const p = stack.pop(), px = p % W, py = (p - px) / W;
    for (const [qx, qy] of [[px - 1, py], [px + 1, py], [px, py - 1], [px, py + 1]]) {
      if (qx >= 0 && qx < W && qy >= 0 && qy < H && label[qy * W + qx] === target) {
        label[qy * W + qx] = value;
        stack.push(qy * W + qx);
      }
    }
  }
}

let stroke = null;
function pos(e) {
  const r = $('label').getBoundingClientRect();
  return [Math.min(W - 1, Math.max(0, Math.floor((e.clientX - r.left) / r.width * W))),
          Math.min(H - 1, Math.max(0, Math.floor((e.clientY - r.top) / r.height * H)))];
}
$('label').addEventListener('pointerdown', (e) => {
  if (e.button !== 0) return;
  e.preventDefault();
  const [x, y] = pos(e);
  edit();
  if (tool === 'fill') {
    fill(x, y, cls);
    drawLabel();
    generate();
    return;
  }
  stroke = { x, y, value: tool === 'eraser' ? ERASE : cls };
  $('label').setPointerCapture(e.pointerId);
  stamp(x, y, stroke.value);
  drawLabel();
});
$('label').addEventListener('pointermove', (e) => {
  if (!stroke) return;
  const [x, y] = pos(e);
  line(stroke.x, stroke.y, x, y, stroke.value);
  stroke.x = x; stroke.y = y;
  drawLabel();
});
const endStroke = () => { if (stroke) { stroke = null; generate(); } };  // the model runs once per stroke
$('label').addEventListener('pointerup', endStroke);
$('label').addEventListener('pointercancel', endStroke);

function restore(from, to) {
  if (!from.length) return;
  to.push(state());
  ({ label, map } = from.pop());
  drawLabel();
  caption();
  generate();
}
$('undo').onclick = () => restore(undoStack, redoStack);
$('redo').onclick = () => restore(redoStack, undoStack);
$('clear').onclick = () => {
  snapshot();
  label.fill(ERASE);
  map = { source: `blank (all ${className(ERASE)})`, edited: false, initial: false };
  drawLabel();
  caption();
  generate();
};
for (const b of document.querySelectorAll('.tool')) b.onclick = () => setTool(b.dataset.tool);
$('size').onchange = () => { size = +$('size').value; };
document.addEventListener('keydown', (e) => {
  if (e.target.tagName === 'INPUT') return;
  const k = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && k === 'z') { e.preventDefault(); (e.shiftKey ? $('redo') : $('undo')).click(); }
  else if ((e.ctrlKey || e.metaKey) && k === 'y') { e.preventDefault(); $('redo').click(); }
  else if (k === 'b' || k === 'f' || k === 'e') setTool({ b: 'brush', f: 'fill', e: 'eraser' }[k]);
});

// ---- label PNGs in and out --------------------------------------------------------------------
// A label PNG holds class ids (grey, as python -m export.infer reads them; RGB with R = G = B too)
// or the palette's colours: it is read the way that explains every pixel. When neither does, the
// error names the pixel where the reading that got further stopped, so a grey map with one id too
// high is blamed on that pixel, not on its first one (where the palette reading stops: grey is not
// a palette colour). `source` names the map in the caption.
async function loadLabelPng(blob, name, source = name, record = true) {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const cv = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = cv.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  const px = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
  const n = bmp.width * bmp.height, ids = new Int32Array(n);
  const isGrey = (i) => px[4 * i] === px[4 * i + 1] && px[4 * i] === px[4 * i + 2];
  let idsStop = -1;
  for (let i = 0; i < n && idsStop < 0; i++) if (!isGrey(i) || px[4 * i] >= C) idsStop = i;
  if (idsStop < 0) {
    for (let i = 0; i < n; i++) ids[i] = px[4 * i];
  } else {
    const byColour = new Map(cfg.classes.map((c, i) => [(c.colour[0] << 16) | (c.colour[1] << 8) | c.colour[2], i]));
    let paletteStop = -1;
    for (let i = 0; i < n && paletteStop < 0; i++) {
      const id = byColour.get((px[4 * i] << 16) | (px[4 * i + 1] << 8) | px[4 * i + 2]);
      if (id === undefined) paletteStop = i;
      else ids[i] = id;
    }
    if (paletteStop >= 0) {
      const i = Math.max(idsStop, paletteStop), x = i % bmp.width, y = (i - x) / bmp.width;
      const colour = `colour (${px[4 * i]}, ${px[4 * i + 1]}, ${px[4 * i + 2]})`;
      let what;
      if (idsStop >= paletteStop && isGrey(i)) what = `class ${px[4 * i]}, the model knows 0..${C - 1}`;
      else if (idsStop === paletteStop) what = `${colour}, neither a class id nor a palette colour`;
      else if (idsStop > paletteStop) what = `${colour}, not grey like the class ids before it`;
      else what = `${colour}, not a palette colour like the pixels before it`;
      throw new Error(`${name}: pixel (${x}, ${y}) is ${what}`);
    }
  }
  if (record) snapshot();
  for (let y = 0; y < H; y++) {  // nearest resize to the model's size
    for (let x = 0; x < W; x++) {
      label[y * W + x] = ids[Math.floor(y * bmp.height / H) * bmp.width + Math.floor(x * bmp.width / W)];
    }
  }
  const note = bmp.width !== W || bmp.height !== H ? ` (resized from ${bmp.width}x${bmp.height})` : '';
  map = { source: `${source}${note}`, edited: false, initial: !record };
  drawLabel();
  caption();
  await generate();
}
$('load').onchange = async () => {
  const f = $('load').files[0];
  if (!f) return;
  try { await loadLabelPng(f, f.name); } catch (e) { status(e.message, true); }
  $('load').value = '';
};
cfg.examples.forEach((path, i) => {
  const b = document.createElement('button');
  b.textContent = `Example ${i + 1}`;
  b.onclick = async () => {
    try { await loadLabelPng(await (await fetch(path)).blob(), path, `example ${i + 1}`); } catch (e) { status(e.message, true); }
  };
  $('examples').appendChild(b);
});

const CRC = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// A single-channel 8-bit PNG of class ids (canvas.toBlob writes RGBA, which export.infer refuses).
function greyPng(ids) {
  const raw = new Uint8Array(H * (W + 1));
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) raw[y * (W + 1) + 1 + x] = ids[y * W + x];
  const blocks = [], adler = [1, 0];
  for (const b of raw) { adler[0] = (adler[0] + b) % 65521; adler[1] = (adler[1] + adler[0]) % 65521; }
  for (let i = 0; i < raw.length; i += 65535) {  // zlib "stored" blocks: no compressor needed
    const part = raw.subarray(i, i + 65535), last = i + 65535 >= raw.length ? 1 : 0;
    blocks.push(Uint8Array.of(last, part.length & 255, part.length >> 8, ~part.length & 255, (~part.length >> 8) & 255), part);
  }
  const a = (adler[1] << 16) | adler[0];
  const zlib = [Uint8Array.of(0x78, 0x01), ...blocks, Uint8Array.of(a >>> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255)];
  const chunk = (type, parts) => {
    const body = new Uint8Array([...type].map((ch) => ch.charCodeAt(0)).concat(...parts.map((p) => Array.from(p))));
    const len = body.length - 4, crc = crc32(body);
    return [Uint8Array.of(len >>> 24, (len >> 16) & 255, (len >> 8) & 255, len & 255), body,
            Uint8Array.of(crc >>> 24, (crc >> 16) & 255, (crc >> 8) & 255, crc & 255)];
  };
  const ihdr = Uint8Array.of(W >>> 24, (W >> 16) & 255, (W >> 8) & 255, W & 255, H >>> 24, (H >> 16) & 255, (H >> 8) & 255, H & 255, 8, 0, 0, 0, 0);
  return new Blob([Uint8Array.of(137, 80, 78, 71, 13, 10, 26, 10), ...chunk('IHDR', [ihdr]), ...chunk('IDAT', zlib), ...chunk('IEND', [])],
                  { type: 'image/png' });
}
function download(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
$('save-label').onclick = () => {
  if (C > 256) { status('class ids above 255 do not fit an 8-bit PNG', true); return; }
  download(greyPng(label), 'label.png');
};
$('save-image').onclick = () => $('output').toBlob((b) => download(b, 'image.png'), 'image/png');

// ---- the model's inputs, computed here ----------------------------------------------------------
// Connected components of each class (8-connectivity, as clade_tf.data.icpe): ids 1.. in raster
// order of their first pixel, 0 for `skip` (the don't-care class, for ICPE).
function components(lab, skip) {
  const comp = new Int32Array(H * W), stack = [];
  let n = 0;
  for (let start = 0; start < H * W; start++) {
    if (comp[start] || lab[start] === skip) continue;
    const c = lab[start];
    comp[start] = ++n;
    stack.push(start);
    while (stack.length) {
      const p = stack.pop(), px = p % W, py = (p - px) / W;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const qx = px + dx, qy = py + dy, q = qy * W + qx;
          if (qx >= 0 && qx < W && qy >= 0 && qy < H && !comp[q] && lab[q] === c) { comp[q] = n; stack.push(q); }
        }
      }
    }
  }
  return [comp, n];
}

// CLADE-ICPE's positional map, equal to clade_tf.data.icpe.icpe_distance_map(label, dontcare):
// each pixel's (y, x) offset from its component's centroid over the component's largest |offset|
// + 1e-5. Sums run in raster order in doubles, as numpy's bincount does, so the float32 values match.
function icpe(lab) {
  const [comp, n] = components(lab, cfg.dontcare ?? -1);
  const out = new Float32Array(H * W * 2);
  const count = new Float64Array(n + 1);
  for (let i = 0; i < H * W; i++) count[comp[i]]++;
  for (let axis = 0; axis < 2; axis++) {
    const coord = (i) => (axis === 0 ? Math.floor(i / W) : i % W);
    const sum = new Float64Array(n + 1), maxabs = new Float64Array(n + 1), off = new Float64Array(H * W);
    for (let i = 0; i < H * W; i++) sum[comp[i]] += coord(i);
    for (let i = 0; i < H * W; i++) {
      const k = comp[i];
      if (!k) continue;
      off[i] = coord(i) - sum[k] / count[k];
      maxabs[k] = Math.max(maxabs[k], Math.abs(off[i]));
    }
    for (let i = 0; i < H * W; i++) if (comp[i]) out[2 * i + axis] = off[i] / (maxabs[comp[i]] + 1e-5);
  }
  return out;
}

// z for VAE models: a seeded normal draw (mulberry32 + Box-Muller); "New style" moves the seed.
function styleVector(seed) {
  let s = seed >>> 0;
  const rand = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const z = new Float32Array(cfg.z_dim);
  for (let i = 0; i < z.length; i++) z[i] = Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  return z;
}

function modelInputs() {
  const x = { label: label.slice() };
  if (cfg.inputs.includes('instance')) x.instance = components(x.label, -1)[0];
  if (cfg.inputs.includes('dist')) x.dist = icpe(x.label);
  if (cfg.inputs.includes('z')) x.z = styleVector(styleSeed);
  return x;
}
const SHAPES = { label: [1, H, W], instance: [1, H, W], dist: [1, H, W, 2], z: [1, cfg.z_dim] };

// ---- runtimes -----------------------------------------------------------------------------------
const params = new URLSearchParams(location.search);
const threads = self.crossOriginIsolated ? Math.min(+(params.get('threads') || navigator.hardwareConcurrency || 1), 8) : 1;

// LiteRT.js's WebAssembly writes its native log (TFLite's "INFO: ...", "WARNING: ...") to stderr,
// which Emscripten prints with console.error: a working page showed a dozen errors. Its loader
// takes the print handlers from self.Module (createWasmLib in @litertjs/wasm-utils; the worker
// threads forward to them), so each line goes to the console at the level it was logged at. The
// NPU warning is known harmless: a browser has no NPU accelerator library for LiteRT to register.
const HARMLESS_NATIVE = /NPU accelerator could not be loaded and registered/;
function nativeLog(text) {
  if (text.startsWith('INFO: ') || HARMLESS_NATIVE.test(text)) console.debug(text);
  else if (text.startsWith('WARNING: ')) console.warn(text);
  else console.error(text);
}

// LiteRT.js warns when it cannot create its default WebGPU device; with no GPU adapter at all
// (headless, or a browser without WebGPU) that is the expected case, and the model runs on the CPU.
async function loadLiteRtQuietly(lrt, path, options) {
  const warn = console.warn;
  console.warn = (...args) => {
    if (typeof args[0] === 'string' && args[0].startsWith('Failed to create default WebGPU device') &&
        (!navigator.gpu || /No GPU adapter found/.test(String(args[1])))) {
      console.info('LiteRT.js: no WebGPU adapter, the model runs on the CPU');
    } else {
      warn.apply(console, args);
    }
  };
  self.Module = { print: (text) => console.log(text), printErr: nativeLog };
  try {
    await lrt.loadLiteRt(path, options);
  } finally {
    console.warn = warn;
  }
}

async function litert() {
  const lrt = await import('./vendor/litert/index.js');
  await loadLiteRtQuietly(lrt, new URL('vendor/litert/wasm/', location.href).href, { threads: threads > 1 });
  const want = params.get('accelerator') || 'auto';
  let model = null, accel = 'wasm';
  // LiteRT.js has already asked for an adapter: asking again would only repeat the browser's warning
  if (want === 'webgpu' || (want === 'auto' && lrt.getWebGpuDevice())) {
    try { model = await lrt.loadAndCompile(cfg.model, { accelerator: 'webgpu' }); accel = 'webgpu'; } catch (e) { console.warn('WebGPU unavailable:', e); }
  }
  if (!model) model = await lrt.loadAndCompile(cfg.model, { accelerator: 'wasm', cpuOptions: { numThreads: threads } });
  const names = model.getInputDetails().map((d) => d.name);
  return {
    backend: accel === 'webgpu' ? 'LiteRT.js, WebGPU' : `LiteRT.js, XNNPACK WebAssembly, ${threads} thread${threads > 1 ? 's' : ''}`,
    async run(x) {
      const ins = {};
      for (const n of names) ins[n] = new lrt.Tensor(x[n], SHAPES[n]);
      try {
        const outs = await model.run(ins);
        let out = Object.values(outs)[0];
        if (accel !== 'wasm') { const moved = await out.moveTo('wasm'); out.delete(); out = moved; }
        const data = out.toTypedArray().slice();
        out.delete();
        return data;
      } finally {
        for (const t of Object.values(ins)) t.delete();
      }
    },
  };
}

async function onnxruntime() {
  const ort = await import('./vendor/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = new URL('vendor/ort/', location.href).href;
  ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create(cfg.model, { executionProviders: ['wasm'] });
  return {
    backend: `onnxruntime-web, WebAssembly, ${threads} thread${threads > 1 ? 's' : ''}`,
    async run(x) {
      const feeds = {};
      for (const n of session.inputNames) feeds[n] = new ort.Tensor(n === 'dist' || n === 'z' ? 'float32' : 'int32', x[n], SHAPES[n]);
      const out = await session.run(feeds);
      return out[session.outputNames[0]].data;
    },
  };
}

let runner = null, running = false, pending = false;

async function runOnce() {
  const x = modelInputs();
  const t = performance.now();
  const y = await runner.run(x);
  const ms = performance.now() - t;
  const img = outCtx.createImageData(W, H);
  for (let i = 0; i < H * W; i++) {
    for (let c = 0; c < 3; c++) img.data[4 * i + c] = Math.min(255, Math.max(0, Math.floor((y[3 * i + c] + 1) * 127.5 + 0.5)));
    img.data[4 * i + 3] = 255;
  }
  outCtx.putImageData(img, 0, 0);
  demo.runs++;
  demo.last = { ms, inputs: x };
  status(`${ms.toFixed(1)} ms · ${runner.backend}`);
}

// Runs the model on the current label map; a request during a run is served once it ends.
async function generate() {
  if (!runner) return;
  if (running) { pending = true; return; }
  running = true;
  try {
    do { pending = false; await runOnce(); } while (pending);
  } catch (e) {
    demo.error = String(e);
    status(`the model failed: ${e.message || e}`, true);
  } finally {
    running = false;
  }
}
demo.generate = generate;
demo.busy = () => running || pending;

$('style').hidden = !cfg.inputs.includes('z');
$('style').onclick = () => { styleSeed++; generate(); };

buildPalette();
drawLabel();
caption();
try {
  const t = performance.now();
  runner = await (cfg.runtime === 'ort' ? onnxruntime() : litert());
  demo.loadMs = performance.now() - t;
  $('info').textContent = `${cfg.model} (${cfg.height}x${cfg.width}, ${C} classes${cfg.preset ? `, ${cfg.preset}` : ''}) ` +
    `loaded in ${(demo.loadMs / 1000).toFixed(1)} s · ${runner.backend}`;
  demo.backend = runner.backend;
  // the page starts on example 1 rather than blank, so that the first look shows what the model
  // does; the caption says so. Not an undoable edit.
  const first = await fetch(cfg.examples[0]);
  await loadLabelPng(await first.blob(), cfg.examples[0], 'example 1', false);
  demo.ready = true;
} catch (e) {
  demo.error = String(e);
  status(`cannot load the model: ${e.message || e}`, true);
}
