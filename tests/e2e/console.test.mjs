// End-to-end tests of the admin console and developer portal: the real binary on real
// Postgres, driven through Debian's headless Chromium. Run: `npm test` in tests/e2e (CI does).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import {
  startServer, failingAnthropic, fakeOpenAI, freshSchema, pgUrl, psql, tcpProxy, browser, screenshotPath,
  waitFor,
} from "./harness.mjs";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const OWNER = { email: "owner@example.com", password: "correct horse battery staple" };
const ADMIN = { email: "admin@example.com", password: "admin password 1234" };
const MEMBER = { email: "member@example.com", password: "member password 1234" };

// Layout shifts not caused by input, summed (Chromium's Cumulative Layout Shift).
const CLS_PROBE = () => {
  window.__cls = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (!e.hadRecentInput) window.__cls += e.value;
  }).observe({ type: "layout-shift", buffered: true });
};

async function signInWithKeyboard(page, who) {
  await page.waitForSelector("#signin-email:focus");
  await page.keyboard.type(who.email);
  await page.keyboard.press("Tab");
  await page.keyboard.type(who.password);
  await page.keyboard.press("Enter");
}

async function signIn(page, server, who) {
  await page.goto(server.url + "/admin");
  await page.fill("#signin-email", who.email);
  await page.fill("#signin-password", who.password);
  await page.click("#signin-submit");
  await page.waitForSelector("#who:not([hidden])");
}

async function axeViolations(page) {
  await page.addScriptTag({ content: AXE });
  const result = await page.evaluate(async () => window.axe.run(document, { resultTypes: ["violations"] }));
  return result.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
}

const panelReady = (page, id) => page.waitForSelector(`#${id}[data-state="ready"]`, { timeout: 20000 });

describe("admin console against a running server with debates in progress", () => {
  let server, fake, openai, schema, chrome, ownerToken;
  let running, queued;

  before(async () => {
    fake = await failingAnthropic();
    openai = await fakeOpenAI();
    schema = freshSchema();
    server = await startServer({
      ARAGORA_DATABASE_URL: pgUrl(schema),
      ANTHROPIC_API_KEY: "sk-ant-e2e-not-a-real-key",
      ARAGORA_ANTHROPIC_BASE_URL: fake.url,
      OPENAI_API_KEY: "sk-e2e-openai",
      ARAGORA_OPENAI_BASE_URL: openai.url,
      ARAGORA_AGENT_MAX_ATTEMPTS: "1",
      ARAGORA_BREAKER_FAILURE_THRESHOLD: "2",
      ARAGORA_BREAKER_OPEN_SECONDS: "600",
      ARAGORA_MAX_CONCURRENT_DEBATES: "1",
      ARAGORA_RATE_LIMIT_RPM: "300",
      ARAGORA_TRUSTED_PROXIES: "127.0.0.1/32",
    });
    await server.createUser(OWNER.email, OWNER.password, "owner");
    await server.createUser(ADMIN.email, ADMIN.password, "admin");
    await server.createUser(MEMBER.email, MEMBER.password, "member");
    ownerToken = await server.login(OWNER.email, OWNER.password);
    const auth = { token: ownerToken };

    // A finished debate, so the leaderboard has ratings and usage has tokens.
    const done = await server.api("POST", "/api/debates", { ...auth, body: { task: "Should the cache be write-through?", agents: ["demo", "demo:1", "demo:2"], rounds: 1 } });
    assert.equal(done.status, 202, JSON.stringify(done.data));
    await waitFor("the first debate to finish", async () => {
      const d = await server.api("GET", `/api/debates/${done.data.debate_id}`, auth);
      return !["queued", "running"].includes(d.data.status);
    });
    // One running (slow demo agents) and one queued behind it (one worker).
    running = (await server.api("POST", "/api/debates", { ...auth, body: { task: "Which queue should we adopt for billing events?", agents: ["demo:1500", "demo:1500", "demo:1500"], rounds: 6, consensus: "unanimous" } })).data.debate_id;
    await waitFor("the slow debate to start", async () => (await server.api("GET", `/api/debates/${running}`, auth)).data.status === "running");
    queued = (await server.api("POST", "/api/debates", { ...auth, body: { task: "Is a monorepo right for us?", agents: ["demo", "demo"], rounds: 1 } })).data.debate_id;
    // A provider failing until its breaker opens (threshold 2), which also logs errors.
    for (let i = 0; i < 2; i++) {
      const r = await server.api("POST", "/api/debug/agent-test", { ...auth, body: { agent: "claude", prompt: "ping" } });
      assert.equal(r.status, 200, JSON.stringify(r.data));
    }
    const cb = await server.api("GET", "/api/agents/circuit-breakers", auth);
    assert.equal(cb.data.circuit_breakers.find((b) => b.agent === "claude").state, "open");
    // A client hammering the API from behind the trusted proxy gets limited.
    const flood = [];
    for (let i = 0; i < 320; i++) flood.push(server.api("GET", "/api/agents", { headers: { "X-Forwarded-For": "203.0.113.7" } }));
    const statuses = (await Promise.all(flood)).map((r) => r.status);
    assert.ok(statuses.includes(429), "the flood was limited");
    chrome = await browser();
  });

  after(async () => {
    await chrome?.close();
    await server?.stop();
    fake?.close();
    openai?.close();
  });

  it("signs the owner in with the keyboard and fills every panel with the server's data", async () => {
    const ctx = await chrome.newContext({ viewport: { width: 1440, height: 1000 }, bypassCSP: true });
    const page = await ctx.newPage();
    await page.addInitScript(CLS_PROBE);
    await page.goto(server.url + "/admin");
    await signInWithKeyboard(page, OWNER);
    await page.waitForSelector("#view-console:not([hidden])");
    assert.equal(await page.textContent("#who-role"), "owner");
    for (const id of ["panel-health", "panel-breakers", "panel-debates", "panel-errors", "panel-ratelimits", "panel-websocket", "panel-leaderboard"]) {
      await panelReady(page, id);
    }
    // Health: each check, with the Postgres backend.
    assert.equal(await page.textContent("#panel-health [data-slot=badge]"), "degraded"); // an open breaker degrades
    assert.match(await page.textContent('#panel-health tr[data-check="database"]'), /ok.*postgres/s);
    assert.match(await page.textContent('#panel-health tr[data-check="redis"]'), /disabled/);
    // Breakers: claude open with its failure kind.
    assert.match(await page.textContent('#panel-breakers tr[data-agent="claude"]'), /open.*2.*server_error/s);
    // Debates: the running and the queued one.
    assert.match(await page.textContent(`#panel-debates tr[data-debate="${running}"]`), /running.*billing events/s);
    // The instance running it (the default instance id is host:api_port).
    assert.match(await page.textContent(`#panel-debates tr[data-debate="${running}"]`), new RegExp(`:${server.apiPort}`));
    assert.match(await page.textContent(`#panel-debates tr[data-debate="${queued}"]`), /queued.*monorepo/s);
    // Finished debates, filterable by status.
    await panelReady(page, "panel-finished");
    assert.match(await page.textContent("#panel-finished"), /write-through/);
    await page.selectOption("#finished-status", "cancelled");
    await page.waitForFunction(() => !/write-through/.test(document.getElementById("panel-finished").textContent));
    await page.selectOption("#finished-status", "");
    await page.waitForFunction(() => /write-through/.test(document.getElementById("panel-finished").textContent));
    // Errors: the provider failures were logged.
    assert.ok((await page.locator("#panel-errors tbody tr").count()) > 0, "recent errors listed");
    assert.match(await page.textContent("#panel-errors tbody"), /claude|anthropic|agent/i);
    // Rate limits: rules, backend, and the flooding client at the top.
    assert.match(await page.textContent("#panel-ratelimits"), /default.*300/s);
    assert.match(await page.textContent("#panel-ratelimits [data-slot=badge]"), /memory/);
    assert.ok(await page.locator('#panel-ratelimits tr[data-limited-key="ip:203.0.113.x"]').count(), "most-limited key shown (masked to /24)");
    // WebSocket stats and leaderboard.
    assert.match(await page.textContent("#panel-websocket"), /Connections.*Event bus\s*local/s);
    assert.ok((await page.locator("#panel-leaderboard tbody tr").count()) >= 1, "ratings listed");
    assert.match(await page.textContent("#panel-leaderboard tbody"), /demo/);

    // Panels refresh on their own: a new debate shows up without a reload.
    const extra = (await server.api("POST", "/api/debates", { token: ownerToken, body: { task: "Refresh check", agents: ["demo", "demo"], rounds: 1 } })).data.debate_id;
    await page.waitForSelector(`#panel-debates tr[data-debate="${extra}"]`, { timeout: 15000 });

    // No layout jumps while data loaded and refreshed.
    const cls = await page.evaluate(() => window.__cls);
    assert.ok(cls < 0.1, `cumulative layout shift ${cls}`);
    await page.screenshot({ path: screenshotPath("console.png"), fullPage: true });

    // Reset the open breaker from the page.
    await page.click('#panel-breakers tr[data-agent="claude"] button');
    await page.waitForSelector('#panel-breakers tr[data-agent="claude"] .badge.ok');
    const cb = await server.api("GET", "/api/agents/circuit-breakers", { token: ownerToken });
    assert.equal(cb.data.circuit_breakers.find((b) => b.agent === "claude").state, "closed");
    assert.match(server.log(), /circuit_breaker/);

    assert.deepEqual(await axeViolations(page), []);
    await ctx.close();
  });

  it("streams a debate live and resumes after the server drops the connection", async () => {
    const ctx = await chrome.newContext({ viewport: { width: 1280, height: 1000 }, bypassCSP: true });
    const page = await ctx.newPage();
    // A fresh slow debate, so the page joins it near its start.
    await server.api("POST", `/api/debates/${running}/cancel`, { token: ownerToken });
    const live = (await server.api("POST", "/api/debates", { token: ownerToken, body: { task: "Should we shard the events table?", agents: ["demo:1500", "demo:1500", "demo:1500"], rounds: 3, consensus: "unanimous" } })).data.debate_id;
    await signIn(page, server, OWNER);
    await page.waitForSelector(`#panel-debates tr[data-debate="${live}"] a`, { timeout: 30000 });
    await page.click(`#panel-debates tr[data-debate="${live}"] a`);
    await page.waitForSelector("#view-live:not([hidden])");
    await page.waitForSelector("#live-events li[data-type=agent_message]", { timeout: 20000 });
    assert.equal(await page.textContent("#live-conn"), "live");
    // SIGUSR1 closes every WebSocket with 1012; the page reconnects with since=<last seq>.
    server.signal("SIGUSR1");
    await page.waitForFunction(() => Number(document.getElementById("live-reconnects").textContent) >= 1, null, { timeout: 10000 });
    await page.waitForFunction(() => ["live", "ended"].includes(document.getElementById("live-conn").textContent), null, { timeout: 15000 });
    await page.screenshot({ path: screenshotPath("live-debate.png"), fullPage: false });
    await page.waitForSelector("#live-events li[data-type=debate_end]", { timeout: 90000 });
    const seqs = await page.$$eval("#live-events li[data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
    const events = await server.api("GET", `/api/debates/${live}/events?limit=1000`, { token: ownerToken });
    const stored = events.data.events.map((e) => e.seq);
    assert.deepEqual(seqs, stored, "every stored event exactly once, in order, across the reconnect");
    for (const t of ["round_start", "agent_message", "critique", "vote", "consensus"]) {
      assert.ok(await page.locator(`#live-events li[data-type=${t}]`).count(), `a ${t} event is shown`);
    }
    assert.equal(await page.textContent("#live-conn"), "ended");
    // The decided debate's signed receipt, verified by the server, with its download link.
    const record = (await server.api("GET", `/api/debates/${live}`, { token: ownerToken })).data;
    if (["completed", "no_consensus"].includes(record.status)) {
      await page.waitForSelector("#live-receipt:not([hidden])", { timeout: 15000 });
      await page.waitForFunction(() => document.getElementById("receipt-verified").textContent === "verified", null, { timeout: 15000 });
      const receipt = (await server.api("GET", `/api/debates/${live}/receipt`, { token: ownerToken })).data;
      assert.equal(await page.textContent("#receipt-id"), receipt.receipt_id);
      assert.equal(await page.textContent("#receipt-key"), receipt.key_id);
      assert.match(await page.getAttribute("#receipt-download", "href"), new RegExp(`/api/v2/receipts/${receipt.receipt_id}/export\\?format=odr$`));
      assert.equal(await page.getAttribute("#receipt-download", "download"), `${receipt.receipt_id}.odr.json`);
    }
    assert.deepEqual(await axeViolations(page), []);
    await ctx.close();
  });

  it("pauses a live debate, injects a moderator's message and resumes it from the live view", async () => {
    const ctx = await chrome.newContext({ viewport: { width: 1280, height: 1000 }, bypassCSP: true });
    const page = await ctx.newPage();
    const auth = { token: ownerToken };
    const id = (await server.api("POST", "/api/debates", { ...auth, body: { task: "Should we adopt event sourcing?", agents: ["demo:1000", "demo:1000", "demo:1000"], rounds: 2, min_rounds: 2 } })).data.debate_id;
    await signIn(page, server, OWNER);
    await page.goto(`${server.url}/admin#/live/${id}`);
    await page.waitForSelector("#view-live:not([hidden])");
    await page.waitForSelector("#live-events li[data-type=agent_message]", { timeout: 30000 });
    assert.equal(await page.isVisible("#live-controls"), true);
    assert.equal(await page.isDisabled("#live-resume"), true, "nothing to resume while running");

    await page.click("#live-pause");
    await page.waitForSelector("#live-events li[data-type=debate_paused]", { timeout: 20000 });
    await page.waitForFunction(() => document.getElementById("live-status").textContent === "paused");
    assert.equal(await page.isDisabled("#live-pause"), true);
    assert.equal(await page.isDisabled("#live-resume"), false);
    // Nothing happens while paused.
    const before = await page.locator("#live-events li[data-seq]").count();
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(await page.locator("#live-events li[data-seq]").count(), before, "no event while paused");

    await page.fill("#live-inject-text", "Budget is fixed at two engineers.");
    await page.click("#live-inject-send");
    await page.waitForSelector("#live-events li[data-type=intervention]", { timeout: 10000 });
    assert.match(await page.textContent("#live-events li[data-type=intervention]"), /two engineers/);
    assert.equal(await page.inputValue("#live-inject-text"), "", "the field is cleared once sent");

    await page.click("#live-resume");
    await page.waitForSelector("#live-events li[data-type=debate_resumed]", { timeout: 20000 });
    assert.match(await page.textContent("#live-events li[data-type=debate_resumed]"), /resumed by user/);
    await page.waitForSelector("#live-events li[data-type=debate_end]", { timeout: 60000 });
    assert.equal(await page.isVisible("#live-controls"), false, "no controls once it has ended");
    const stored = (await server.api("GET", `/api/debates/${id}/events?limit=1000`, auth)).data.events;
    const types = stored.map((e) => e.type);
    assert.ok(types.indexOf("debate_paused") < types.indexOf("intervention"));
    assert.ok(types.indexOf("intervention") < types.indexOf("debate_resumed"));
    const seqs = await page.$$eval("#live-events li[data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, stored.map((e) => e.seq), "every event once, in order");
    assert.deepEqual(await axeViolations(page), []);
    await ctx.close();
  });

  it("lets a member generate, copy and revoke an API key and see usage by model", async () => {
    const ctx = await chrome.newContext({ viewport: { width: 1280, height: 1000 }, permissions: ["clipboard-read", "clipboard-write"], bypassCSP: true });
    const page = await ctx.newPage();
    // The member's own usage: one debate through the API.
    const memberToken = await server.login(MEMBER.email, MEMBER.password);
    const d = (await server.api("POST", "/api/debates", { token: memberToken, body: { task: "Tabs or spaces?", agents: ["demo", "gpt-4"], rounds: 1 } })).data.debate_id;
    await waitFor("the member's debate", async () => !["queued", "running"].includes((await server.api("GET", `/api/debates/${d}`, { token: memberToken })).data.status), { timeout: 120000 });

    await signIn(page, server, MEMBER);
    await page.waitForSelector("#view-portal:not([hidden])"); // members land on the portal
    await panelReady(page, "panel-apikey");
    await page.click("#generate-key");
    const key = await page.inputValue("#new-key");
    assert.match(key, /^ara_/);
    await page.click("#copy-key");
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), key);
    assert.equal((await server.api("GET", "/api/auth/me", { token: key })).status, 200, "the new key works");
    assert.match(await page.textContent("#key-prefix"), new RegExp("^" + key.slice(0, 8)));
    // Usage for the period, with the chart by provider/model.
    await panelReady(page, "panel-usage");
    assert.ok(Number((await page.textContent("#usage-debates")).replace(/,/g, "")) >= 1);
    assert.ok(await page.locator("#usage-chart svg rect").count() >= 3, "bars drawn");
    // Tokens and cost by provider/model: the OpenAI-shaped agent's streamed usage is priced.
    assert.match(await page.textContent('#panel-usage tr[data-model="openai / gpt-4o"]'), /[1-9]/);
    assert.ok(await page.locator('#panel-usage tr[data-model="demo / demo"]').count(), "demo usage row");
    assert.notEqual(await page.textContent("#usage-cost"), "$0.0000", "a priced model has a cost");
    await page.screenshot({ path: screenshotPath("developer-portal.png"), fullPage: true });
    assert.deepEqual(await axeViolations(page), []);
    // Shown once: after a reload only the prefix remains.
    await page.reload();
    await panelReady(page, "panel-apikey");
    assert.equal(await page.locator("#new-key").count(), 0);
    await page.click("#revoke-key");
    await page.click("#revoke-confirm");
    await page.waitForSelector("#panel-apikey p.empty");
    assert.equal((await server.api("GET", "/api/auth/me", { token: key })).status, 401, "the revoked key is refused");
    // The console is not for members: a clear message instead of empty panels.
    await page.click("#nav-console");
    await page.waitForSelector("#console-denied:not([hidden])");
    assert.match(await page.textContent("#console-denied"), /Your role is member; the admin console needs admin or owner/);
    await ctx.close();
  });

  it("explains a 403 when an admin is demoted while the console is open", async () => {
    const ctx = await chrome.newContext();
    const page = await ctx.newPage();
    await signIn(page, server, ADMIN);
    await panelReady(page, "panel-breakers");
    psql(schema, `UPDATE users SET role = 'member' WHERE email = '${ADMIN.email}'`);
    await page.waitForSelector("#console-denied:not([hidden])", { timeout: 15000 });
    assert.match(await page.textContent("#console-denied"), /Your role is member; the admin console needs admin or owner/);
    assert.equal(await page.textContent("#who-role"), "member");
    await ctx.close();
  });

  it("a session survives reloads (refresh cookie) and signing out ends it", async () => {
    const ctx = await chrome.newContext();
    const page = await ctx.newPage();
    await signIn(page, server, OWNER);
    const cookies = await ctx.cookies();
    const refresh = cookies.find((c) => c.name === "aragora_refresh");
    assert.ok(refresh && refresh.httpOnly && refresh.sameSite === "Strict", JSON.stringify(cookies));
    assert.equal(await page.evaluate(() => document.cookie), "", "the page cannot read the refresh token");
    assert.equal(await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage })), "{}{}", "no token in web storage");
    await page.reload();
    await page.waitForSelector("#who:not([hidden])");
    await page.click("#sign-out");
    await page.waitForSelector("#view-signin:not([hidden])");
    assert.match(await page.textContent("#signin-msg"), /signed out/);
    await page.reload();
    await page.waitForSelector("#view-signin:not([hidden])");
    await ctx.close();
  });

  it("works from the keyboard alone: skip link, navigation, generating a key", async () => {
    const ctx = await chrome.newContext();
    const page = await ctx.newPage();
    await signIn(page, server, OWNER);
    await panelReady(page, "panel-health");
    const focused = () => page.evaluate(() => document.activeElement && (document.activeElement.id || document.activeElement.textContent.trim()));
    // Start where a fresh tab starts: focus at the top of the document.
    await page.evaluate(() => { document.body.tabIndex = -1; document.body.focus(); document.body.removeAttribute("tabindex"); });
    await page.keyboard.press("Tab");
    assert.equal(await focused(), "Skip to content");
    await page.keyboard.press("Tab");
    assert.equal(await focused(), "nav-console");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Tab");
    assert.equal(await focused(), "nav-portal");
    await page.keyboard.press("Enter");
    await page.waitForSelector("#view-portal:not([hidden])");
    assert.equal(await focused(), "portal-title", "focus moves to the new view's heading");
    await panelReady(page, "panel-apikey");
    for (let i = 0; i < 40 && (await focused()) !== "generate-key"; i++) await page.keyboard.press("Tab");
    assert.equal(await focused(), "generate-key");
    await page.keyboard.press("Enter");
    await page.waitForSelector("#new-key");
    assert.equal(await focused(), "copy-key", "focus lands on Copy");
    assert.match(await page.inputValue("#new-key"), /^ara_/);
    await ctx.close();
  });
});

describe("failure cases show a clear message", () => {
  let chrome;
  before(async () => { chrome = await browser(); });
  after(async () => { await chrome?.close(); });

  it("401: an expired access token is refreshed; a revoked session asks to sign in again", async () => {
    const server = await startServer({ ARAGORA_ACCESS_TOKEN_TTL_SECONDS: "30" });
    try {
      await server.createUser(OWNER.email, OWNER.password, "owner");
      const ctx = await chrome.newContext();
      const page = await ctx.newPage();
      await signIn(page, server, OWNER);
      const first = (await ctx.cookies()).find((c) => c.name === "aragora_refresh").value;
      // Past the access token's 30 s life the page has refreshed on its own.
      await waitFor("a rotated refresh cookie", async () => (await ctx.cookies()).find((c) => c.name === "aragora_refresh").value !== first, { timeout: 40000, interval: 500 });
      await panelReady(page, "panel-health");
      assert.ok(await page.isHidden("#view-signin"));
      // Revoke the session elsewhere (logout with the cookie), then wait for the token to lapse.
      const current = (await ctx.cookies()).find((c) => c.name === "aragora_refresh").value;
      const out = await fetch(server.url + "/api/auth/logout", { method: "POST", headers: { "Content-Type": "application/json", Cookie: `aragora_refresh=${current}` }, body: "{}" });
      assert.equal(out.status, 204);
      await page.waitForSelector("#view-signin:not([hidden])", { timeout: 45000 });
      assert.match(await page.textContent("#signin-msg"), /Sign in again/);
      await page.screenshot({ path: screenshotPath("signin-expired.png") });
      await ctx.close();
    } finally {
      await server.stop();
    }
  });

  it("database down: a banner and panel messages, cleared when it returns", async () => {
    const schema = freshSchema();
    const proxy = await tcpProxy(5432);
    const server = await startServer({ ARAGORA_DATABASE_URL: pgUrl(schema, `127.0.0.1:${proxy.port}`) });
    try {
      await server.createUser(OWNER.email, OWNER.password, "owner");
      const ctx = await chrome.newContext();
      const page = await ctx.newPage();
      await signIn(page, server, OWNER);
      await panelReady(page, "panel-debates");
      await proxy.cut();
      await page.waitForSelector('#banner[data-kind="database"]:not([hidden])', { timeout: 20000 });
      assert.match(await page.textContent("#banner"), /Database down/);
      await page.waitForFunction(() => document.querySelector("#panel-health [data-slot=badge]").textContent === "unhealthy", null, { timeout: 20000 });
      assert.match(await page.textContent('#panel-health tr[data-check="database"]'), /error/);
      await page.waitForSelector("#panel-debates .panel-msg:not([hidden])", { timeout: 20000 });
      assert.match(await page.textContent("#panel-debates .panel-msg"), /database/i);
      await page.screenshot({ path: screenshotPath("database-down.png") });
      await proxy.restore();
      await page.waitForSelector("#banner[hidden]", { state: "attached", timeout: 30000 });
      await ctx.close();
    } finally {
      await server.stop();
      proxy.close();
    }
  });

  it("server unreachable: a banner while it is down, gone when it is back", async () => {
    const server = await startServer({});
    try {
      await server.createUser(OWNER.email, OWNER.password, "owner");
      const ctx = await chrome.newContext();
      const page = await ctx.newPage();
      await signIn(page, server, OWNER);
      await panelReady(page, "panel-health");
      await server.stop();
      await page.waitForSelector('#banner[data-kind="unreachable"]:not([hidden])', { timeout: 20000 });
      assert.match(await page.textContent("#banner"), /Server unreachable.*Cannot reach the server/s);
      await server.start();
      await page.waitForSelector("#banner[hidden]", { state: "attached", timeout: 30000 });
      await ctx.close();
    } finally {
      await server.stop();
    }
  });

  it("CORS: an API that refuses the console's origin is named as such, with the fix", async () => {
    const server = await startServer({});
    try {
      await server.createUser(OWNER.email, OWNER.password, "owner");
      await server.stop();
      // The console is opened at http://localhost:<port>; its API is http://127.0.0.1:<port>.
      server.env.ARAGORA_ADMIN_API_URL = server.url;
      await server.start();
      const ctx = await chrome.newContext();
      const page = await ctx.newPage();
      const consoleOrigin = `http://localhost:${server.apiPort}`;
      await page.goto(consoleOrigin + "/admin");
      await page.waitForSelector('#banner[data-kind="cors"]:not([hidden])', { timeout: 20000 });
      const text = await page.textContent("#banner");
      assert.match(text, /Blocked by CORS/);
      assert.ok(text.includes(`Add ${consoleOrigin} to ARAGORA_ALLOWED_ORIGINS`), text);
      // Allowed, the same page signs in across origins.
      await server.stop();
      server.env.ARAGORA_ALLOWED_ORIGINS = consoleOrigin;
      await server.start();
      await page.reload();
      await page.waitForSelector("#view-signin:not([hidden])", { timeout: 20000 });
      await page.fill("#signin-email", OWNER.email);
      await page.fill("#signin-password", OWNER.password);
      await page.click("#signin-submit");
      await panelReady(page, "panel-health");
      await ctx.close();
    } finally {
      await server.stop();
    }
  });

  it("auth off (development): opens as the local owner with no sign-in", async () => {
    const server = await startServer({ ARAGORA_JWT_SECRET: null });
    try {
      const ctx = await chrome.newContext();
      const page = await ctx.newPage();
      await page.goto(server.url + "/admin");
      await panelReady(page, "panel-health");
      assert.equal(await page.textContent("#who-role"), "owner");
      assert.ok(await page.isHidden("#sign-out"), "nothing to sign out of");
      assert.ok(await page.isHidden("#view-signin"));
      // Nothing rated yet: the leaderboard says where ratings come from.
      await panelReady(page, "panel-leaderboard");
      assert.match(await page.textContent("#panel-leaderboard"), /between different agents/);
      // The portal explains that keys are not needed instead of offering one that fails.
      await page.goto(server.url + "/admin#/portal");
      await page.waitForSelector("#keys-auth-off");
      assert.match(await page.textContent("#keys-auth-off"), /Auth is off/);
      assert.equal(await page.locator("#generate-key").count(), 0);
      await ctx.close();
    } finally {
      await server.stop();
    }
  });

  it("is usable on a phone: no horizontal scrolling, panels stacked", async () => {
    const server = await startServer({});
    try {
      await server.createUser(OWNER.email, OWNER.password, "owner");
      const ctx = await chrome.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
      const page = await ctx.newPage();
      await signIn(page, server, OWNER);
      await panelReady(page, "panel-leaderboard");
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.ok(overflow <= 0, `page is ${overflow}px wider than the screen`);
      const [a, b] = await Promise.all(["#panel-health", "#panel-breakers"].map((s) => page.locator(s).boundingBox()));
      assert.ok(b.y > a.y + a.height - 1, "panels stack in one column");
      await page.screenshot({ path: screenshotPath("console-phone.png") });
      await ctx.close();
    } finally {
      await server.stop();
    }
  });
});
