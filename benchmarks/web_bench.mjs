// Times the demo page's model run in headless Chromium: node benchmarks/web_bench.mjs URL WARMUP REPEATS
// prints {load_ms, median_ms, backend, memory_bytes}: the runtime + model load of the page, the median of
// REPEATS runs (demo.generate(), timed inside the page around the runtime call) after WARMUP.
import { readdirSync, readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

// Resident memory of the browser: all descendants of this Node process (renderer, GPU, utility),
// from /proc. (The page's own measureUserAgentSpecificMemory does not resolve in headless runs.)
function browserRss(root) {
  const parent = new Map(), rss = new Map();
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      parent.set(+pid, +stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      rss.set(+pid, m ? +m[1] * 1024 : 0);
    } catch { /* the process ended meanwhile */ }
  }
  const inTree = (pid) => { for (let p = pid; p > 1; p = parent.get(p)) if (p === root) return true; return false; };
  return [...rss].filter(([pid]) => pid !== root && inTree(pid)).reduce((a, [, b]) => a + b, 0);
}

const [url, warmup, repeats] = [process.argv[2], +process.argv[3], +process.argv[4]];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => window.demo && (window.demo.ready || window.demo.error), null, { timeout: 600000 });
  const r = await page.evaluate(async ([warmup, repeats]) => {
    const d = window.demo;
    if (d.error) return { error: d.error };
    const times = [];
    for (let i = 0; i < warmup + repeats; i++) {
      await d.generate();
      if (i >= warmup) times.push(d.last.ms);
    }
    times.sort((a, b) => a - b);
    return { load_ms: d.loadMs, median_ms: times[Math.floor(times.length / 2)], backend: d.backend };
  }, [warmup, repeats]);
  r.memory_bytes = browserRss(process.pid);  // Chromium's processes descend from this one
  console.log(JSON.stringify(r));
} finally {
  await browser.close();
}
