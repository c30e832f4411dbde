// Loads a Chorus node's dashboard in the system's headless Chromium, waits until it has drawn
// `minTicks` ticks, and prints what the page shows as JSON (the Rust test compares it with the
// node's API). Prints `{"connected":true}` on a line of its own first, once the page is live.
// Saves a full-page screenshot.
//
//   node check-dashboard.mjs URL SCREENSHOT.png [MIN_TICKS]
//
// The browser is Debian's `chromium` (CHROMIUM overrides the path): Playwright's own browser
// download is never used.
import { chromium } from "playwright-core";

const [url, screenshot, minTicksArg] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node check-dashboard.mjs URL SCREENSHOT.png [MIN_TICKS]");
  process.exit(2);
}
const minTicks = Number(minTicksArg ?? 5);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1320, height: 1000 } });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  const resp = await page.goto(url, { waitUntil: "load" });
  const csp = resp.headers()["content-security-policy"] ?? null;
  await page.waitForFunction(() => Number(document.getElementById("live").dataset.ticks) >= 1, null, {
    timeout: 60_000,
  });
  // The first line says the page is live: the test starts its writes then.
  console.log(JSON.stringify({ connected: true }));
  await page.waitForFunction((n) => Number(document.getElementById("live").dataset.ticks) >= n, minTicks, {
    timeout: 60_000,
  });
  const shown = await page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent.trim();
    const rows = (id) =>
      [...document.getElementById(id).tBodies[0].rows]
        .filter((r) => !r.querySelector("td.empty"))
        .map((r) => [...r.cells].map((c) => c.textContent.trim()));
    const plotted = (p) => p.data.slice(1).map((s) => s.filter((v) => v != null).length);
    return {
      ticks: Number(document.getElementById("live").dataset.ticks),
      live: text("live"),
      cards: {
        events: text("v-events"),
        coherence: Number(document.getElementById("v-coherence").dataset.value),
        dopamine: text("v-dopamine"),
        n: text("v-n"),
        phase: text("v-phase"),
      },
      // Points each plot's series holds, read from uPlot itself.
      plots: { kairos: plotted(plots.kairos), n: plotted(plots.n), rate: plotted(plots.rate) },
      peers: rows("peers"),
      elections: rows("elections"),
      emissaries: rows("emissaries"),
      mesh: text("mesh-summary"),
      finality: text("finality"),
    };
  });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ...shown, csp, problems }));
} finally {
  await browser.close();
}
