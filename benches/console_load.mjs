// How fast the admin console comes up in a real browser, and what it costs the browser and
// the server. Run (release binary recommended):
//
//   cargo build --release --bin aragora
//   cd tests/e2e && npm ci && cd ../..
//   ARAGORA_BIN=target/release/aragora node benches/console_load.mjs
//
// Measures, with Debian's headless Chromium against the real binary (SQLite default, auth
// on, one debate finished so every panel has rows):
// - time from navigation to all seven console panels filled, for a signed-in session
//   (the reload path: page, config.json, cookie refresh, /me, then the panels), 20 loads;
// - bytes the browser transferred for one load, and the number of requests;
// - the page's JavaScript heap after a load and after 5 minutes' worth of 5 s refreshes
//   (60 refresh cycles driven by "Refresh now"), to see that polling does not leak;
// - the server's resident memory before and after.
// Method and recorded numbers: docs/benchmarks.md.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../tests/e2e/package.json", import.meta.url));
const { startServer, browser } = await import("../tests/e2e/harness.mjs");
require.resolve("playwright-core"); // fails early with a clear message when npm ci was not run

const LOADS = 20;
const CYCLES = 60;
const PANELS = ["panel-health", "panel-breakers", "panel-debates", "panel-errors", "panel-ratelimits", "panel-websocket", "panel-leaderboard"];
const who = { email: "bench@example.com", password: "benchmark password 1234" };

const rss = (pid) => Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]) / 1024;
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length - 1) * p))];

// The page is the only client; keep it clear of the default per-client limit (120/min).
const server = await startServer({ ARAGORA_RATE_LIMIT_RPM: "100000" });
const chrome = await browser();
try {
  await server.createUser(who.email, who.password, "owner");
  const token = await server.login(who.email, who.password);
  const d = await server.api("POST", "/api/debates", { token, body: { task: "Benchmark debate", agents: ["demo", "demo:1", "demo:2"], rounds: 2 } });
  for (let i = 0; i < 100; i++) {
    const r = await server.api("GET", `/api/debates/${d.data.debate_id}`, { token });
    if (!["queued", "running"].includes(r.data.status)) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  const rssBefore = rss(server.proc.pid);

  const ctx = await chrome.newContext({ viewport: { width: 1440, height: 1000 } });
  const page = await ctx.newPage();
  await page.goto(server.url + "/admin");
  await page.fill("#signin-email", who.email);
  await page.fill("#signin-password", who.password);
  await page.click("#signin-submit");
  await page.waitForSelector("#panel-leaderboard[data-state=ready]");
  await page.uncheck("#auto-refresh");

  const cdp = await ctx.newCDPSession(page);
  await cdp.send("Network.enable");
  // Bytes on the wire (headers included) and requests, as Chromium's network stack counts them.
  let wire = 0, sent = 0;
  cdp.on("Network.loadingFinished", (e) => { wire += e.encodedDataLength; });
  cdp.on("Network.requestWillBeSent", () => { sent += 1; });
  const ready = () => page.waitForFunction((ids) => ids.every((id) => document.getElementById(id).dataset.state === "ready"), PANELS, { polling: 5, timeout: 30000 });
  // Cold: the browser cache is off, every file is fetched. Warm: files revalidate (304).
  const measure = async (cold) => {
    await cdp.send("Network.setCacheDisabled", { cacheDisabled: cold });
    const times = [];
    let bytes = 0, requests = 0;
    for (let i = 0; i < LOADS + 2; i++) {
      wire = 0; sent = 0;
      const t = Date.now();
      await page.reload();
      await ready();
      const ms = Date.now() - t;
      if (i >= 2) times.push(ms); // two warm-up loads
      await page.waitForTimeout(50);
      bytes = wire; requests = sent;
    }
    return { times, bytes, requests };
  };
  const cold = await measure(true);
  const warm = await measure(false);
  await page.uncheck("#auto-refresh");
  const heap = async () => { await cdp.send("HeapProfiler.collectGarbage"); return (await cdp.send("Runtime.getHeapUsage")).usedSize / 1048576; };
  const heapAfterLoad = await heap();
  for (let i = 0; i < CYCLES; i++) {
    await page.evaluate(() => { for (const id of ["panel-health"]) document.getElementById(id).dataset.state = "loading"; });
    await page.click("#refresh-now");
    await page.waitForFunction(() => document.getElementById("panel-health").dataset.state === "ready", null, { polling: 5 });
  }
  await page.waitForTimeout(500);
  const heapAfterRefreshes = await heap();
  const rssAfter = rss(server.proc.pid);

  console.log(`console load to all ${PANELS.length} panels filled, ${LOADS} reloads of a signed-in session each:`);
  for (const [name, r] of [["cold (cache off)", cold], ["warm (304s)", warm]]) {
    console.log(`  ${name}: p50 ${pct(r.times, 0.5)} ms, p90 ${pct(r.times, 0.9)} ms, max ${Math.max(...r.times)} ms; ${r.requests} requests, ${(r.bytes / 1024).toFixed(1)} KiB on the wire`);
  }
  console.log(`  page JS heap: ${heapAfterLoad.toFixed(2)} MiB after load, ${heapAfterRefreshes.toFixed(2)} MiB after ${CYCLES} refresh cycles`);
  console.log(`  server RSS: ${rssBefore.toFixed(1)} MiB before, ${rssAfter.toFixed(1)} MiB after`);
  await ctx.close();
} finally {
  await chrome.close();
  await server.stop();
}
