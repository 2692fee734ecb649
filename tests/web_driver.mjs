// Drives the demo page in headless Chromium (playwright-core, Debian's /usr/bin/chromium) like a
// user: node tests/web_driver.mjs plan.json result.json. The plan: {url, steps: [...]}, each step
//   {op: "paint", cls, size, points: [[x, y], ...], tool}   a mouse stroke in label-map pixels
//                            (tool: "brush", the default, or "eraser", which takes no cls)
//   {op: "fill", cls, x, y} | {op: "undo"} | {op: "redo"} | {op: "clear"}
//   {op: "style"}            a VAE model's new z
//   {op: "example", n}       the button of example n (1, 2, ...)
//   {op: "tool", tool}       selects a tool ("brush", "fill", "eraser") without painting
//   {op: "load", file}       a label PNG; with `error: name`, one the page must refuse: its
//                            status line goes to result[name]
//   {op: "read", name}       the last run's inputs, the output canvas's pixels and the page's
//                            texts -> result[name]
//   {op: "text", name}       the page's texts only: status, label map caption, footer
//   {op: "screenshot", path}
// Every editing step waits for the model run it triggers. Errors on the page fail the run; its
// console messages are in result.messages ("type: text"), the errors also in result.console.
import { readFileSync, writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [planPath, outPath] = process.argv.slice(2);
const plan = JSON.parse(readFileSync(planPath, 'utf8'));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // without the background-networking flags Chromium keeps calling home on a closed network
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const result = { console: [], messages: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on('console', (m) => {
    result.messages.push(`${m.type()}: ${m.text()}`);
    if (m.type() === 'error') result.console.push(m.text());
  });
  page.on('pageerror', (e) => { throw e; });
  await page.goto(plan.url);
  await page.waitForFunction(() => window.demo && (window.demo.ready || window.demo.error), null, { timeout: 120000 });
  const err = await page.evaluate(() => window.demo.error);
  if (err) throw new Error(`page: ${err}`);
  result.backend = await page.evaluate(() => window.demo.backend);
  const { W, H } = await page.evaluate(() => ({ W: window.demo.config.width, H: window.demo.config.height }));
  const texts = () => {
    const text = (sel) => document.querySelector(sel).innerText;
    return { status: text('#status'), caption: text('#label + figcaption'), footer: text('#info') };
  };
  let box = null;  // measured after the clicks that precede a stroke, which may scroll the page
  const at = ([x, y]) => [box.x + (x + 0.5) * box.width / W, box.y + (y + 0.5) * box.height / H];

  // runs the action, then waits for the model run it starts to finish
  async function edit(action) {
    const before = await page.evaluate(() => window.demo.runs);
    await action();
    await page.waitForFunction((n) => window.demo.runs > n && !window.demo.busy(), before, { timeout: 60000 });
  }
  async function choose(cls) {
    await page.fill('#filter', '');
    await page.click(`#palette li[data-cls="${cls}"]`);
  }
  for (const step of plan.steps) {
    if (step.op === 'paint') {
      if (step.tool !== 'eraser') await choose(step.cls);
      await page.click(`.tool[data-tool="${step.tool || 'brush'}"]`);
      await page.selectOption('#size', String(step.size));
      box = await page.locator('#label').boundingBox();
      await edit(async () => {
        await page.mouse.move(...at(step.points[0]));
        await page.mouse.down();
        for (const p of step.points.slice(1)) await page.mouse.move(...at(p), { steps: 4 });
        await page.mouse.up();
      });
    } else if (step.op === 'fill') {
      await choose(step.cls);
      await page.click('.tool[data-tool="fill"]');
      box = await page.locator('#label').boundingBox();
      await edit(() => page.mouse.click(...at([step.x, step.y])));
    } else if (['undo', 'redo', 'style', 'clear'].includes(step.op)) {
      await edit(() => page.click(`#${step.op}`));
    } else if (step.op === 'example') {
      await edit(() => page.click(`#examples button:nth-child(${step.n})`));
    } else if (step.op === 'tool') {
      await page.click(`.tool[data-tool="${step.tool}"]`);
    } else if (step.op === 'text') {
      result[step.name] = await page.evaluate(texts);
    } else if (step.op === 'load' && step.error) {
      await page.setInputFiles('#load', step.file);
      await page.waitForSelector('#status.error', { timeout: 60000 });
      result[step.error] = await page.textContent('#status');
    } else if (step.op === 'load') {
      await edit(() => page.setInputFiles('#load', step.file));
    } else if (step.op === 'read') {
      result[step.name] = await page.evaluate(() => {
        const d = window.demo, c = document.getElementById('output');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const x = d.last.inputs, plain = (a) => (a ? Array.from(a) : null);
        return { label: plain(x.label), instance: plain(x.instance), dist: plain(x.dist), z: plain(x.z),
                 output: Array.from(px), ms: d.last.ms };
      });
      Object.assign(result[step.name], await page.evaluate(texts));
    } else if (step.op === 'screenshot') {
      await page.screenshot({ path: step.path });
    } else {
      throw new Error(`unknown step ${step.op}`);
    }
  }
  const err2 = await page.evaluate(() => window.demo.error);
  if (err2) throw new Error(`page: ${err2}`);
} finally {
  await browser.close();
}
writeFileSync(outPath, JSON.stringify(result));
