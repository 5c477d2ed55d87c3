
import { chromium } from "playwright-core";
const [url, shot, seconds, readyJs] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
         "--disable-background-networking", "--disable-component-update", "--no-first-run"] });
const page = await (await browser.newContext({ viewport: { width: 640, height: 480 }, deviceScaleFactor: 1 })).newPage();
const outside = [];
page.on("request", (r) => { const u = r.url(); if (!/^(https?:\/\/127\.0\.0\.1|file:|blob:|data:)/.test(u)) outside.push(u); });
await page.addInitScript(() => {
  window.__rafCount = 0;
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (cb) => raf((t) => { window.__rafCount++; cb(t); });
});
await page.goto(url);
await page.waitForFunction(readyJs, null, { timeout: 300000 });
await new Promise((r) => setTimeout(r, 8000));
// viser pops a "Software WebGL rendering detected" notification over the canvas: not part of the image.
await page.evaluate(() => document.querySelectorAll('[class*="Notification"]').forEach((e) => e.remove()));
await new Promise((r) => setTimeout(r, 1000));
const canvas = page.locator("canvas").first();
const box = await canvas.boundingBox();
await page.screenshot({ path: shot, clip: box, timeout: 300000 });
const c0 = await page.evaluate(() => window.__rafCount); const t0 = Date.now();
await new Promise((r) => setTimeout(r, Number(seconds) * 1000));
const c1 = await page.evaluate(() => window.__rafCount);
process.stdout.write(JSON.stringify({ fps: (c1 - c0) / ((Date.now() - t0) / 1000), outside, box }));
await browser.close();
