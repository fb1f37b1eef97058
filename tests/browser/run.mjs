// Opens a page in headless Chromium, waits for `window.heraldResult`, prints it as one JSON line on stdout.
//
//   node run.mjs <url> [screenshot.png]
//
// Chromium comes from the system (Debian's `chromium` package; CHROMIUM overrides the path), not from
// Playwright's own download. Exit code 0 when the page reported a result (whatever it says), 1 otherwise.
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url) {
  console.error("usage: node run.mjs <url> [screenshot.png]");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT_MS = 30000;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // QUIC to a loopback address with a pinned self-signed certificate needs no flag; these keep a headless
  // Chromium on a CI machine quiet and deterministic.
  args: ["--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage"],
});
let code = 1;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`[page ${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => console.error(`[page error] ${e}`));
  await page.goto(url, { timeout: TIMEOUT_MS });
  await page.waitForFunction(() => window.heraldResult !== undefined, null, { timeout: TIMEOUT_MS });
  const result = await page.evaluate(() => window.heraldResult);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(result));
  code = 0;
} catch (e) {
  console.error(`browser run failed: ${e}`);
} finally {
  await browser.close();
}
process.exit(code);
