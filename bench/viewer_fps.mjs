// Frame rate and first image of ds4d's viewer page in Debian's headless Chromium (SwiftShader,
// i.e. WebGL on the CPU: a lower bound for any machine with a GPU).
//   node viewer_fps.mjs URL SCREENSHOT.png SECONDS   -> prints {"loadSeconds", "pausedFps", "playingFps"}
import { chromium } from "playwright-core";

const [url, shot, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg || 5);
const browser = await chromium.launch({
  executablePath: process.env.DS4D_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
         "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 900, height: 700 }, deviceScaleFactor: 1 })).newPage();
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.ready === "1" || document.body.dataset.error, null, { timeout: 300000 });
  const loadSeconds = (Date.now() - t0) / 1000;
  const start = await page.evaluate(() => window.ds4d.renders);
  await page.waitForFunction((n) => window.ds4d.renders >= n, start + 5, { timeout: 120000 });
  await new Promise((r) => setTimeout(r, 1000));
  const box = await page.locator("#canvas-holder canvas").boundingBox();
  await page.screenshot({ path: shot, clip: box, timeout: 300000 });  // no wait for a "stable" element: frames are slow
  const rate = async () => {
    const r0 = await page.evaluate(() => window.ds4d.renders);
    const c0 = Date.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const r1 = await page.evaluate(() => window.ds4d.renders);
    return (r1 - r0) / ((Date.now() - c0) / 1000);
  };
  const pausedFps = await rate();  // one frame shown, camera still
  await page.locator("#play").click();  // playing: the splats shown change with every clip frame
  const playingFps = await rate();
  process.stdout.write(JSON.stringify({ loadSeconds, pausedFps, playingFps }));
} finally {
  await browser.close();
}
