// Test harness for the browser tests: the real `aragora` binary, real Postgres, a vendor-
// shaped fake provider, a TCP proxy that can cut the database, and Debian's Chromium.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import http from "node:http";
import { randomUUID } from "node:crypto";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, "../..");
export const BIN = process.env.ARAGORA_BIN || join(ROOT, "target/debug/aragora");
export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
export const SCREENSHOTS = process.env.ARAGORA_E2E_SCREENSHOTS || join(ROOT, "docs/screenshots");
const PG_URL = process.env.ARAGORA_TEST_DATABASE_URL || "postgres://postgres@127.0.0.1:5432/test";
export const JWT_SECRET = "e2e-" + randomUUID() + randomUUID();

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

export async function waitFor(what, fn, { timeout = 20000, interval = 100 } = {}) {
  const until = Date.now() + timeout;
  let last;
  while (Date.now() < until) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(interval);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

// A fresh schema in the test database for one server, so servers and runs never share data.
export function freshSchema() {
  const schema = "e2e_" + randomUUID().replace(/-/g, "");
  execFileSync("psql", [PG_URL, "-v", "ON_ERROR_STOP=1", "-qc", `CREATE SCHEMA ${schema}`]);
  return schema;
}
export function pgUrl(schema, hostPort) {
  const u = new URL(PG_URL);
  if (hostPort) u.host = hostPort;
  // libpq decodes %20, not "+", so the query is written by hand.
  return `${u.toString()}${u.search ? "&" : "?"}options=-c%20search_path%3D${schema}`;
}
export function psql(schema, sql) {
  return execFileSync("psql", [pgUrl(schema), "-v", "ON_ERROR_STOP=1", "-qAtc", sql]).toString().trim();
}

/** Start `aragora serve` with `env` on free ports; resolves when /api/health/live answers. */
export async function startServer(env = {}, { apiPort, wsPort } = {}) {
  if (!existsSync(BIN)) throw new Error(`no aragora binary at ${BIN}; run cargo build first`);
  const dir = mkdtempSync(join(tmpdir(), "aragora-e2e-"));
  apiPort = apiPort || (await freePort());
  wsPort = wsPort || (await freePort());
  const fullEnv = {
    PATH: process.env.PATH,
    HOME: dir,
    ARAGORA_DATA_DIR: join(dir, "data"),
    ARAGORA_LOCK_DIR: dir,
    ARAGORA_JWT_SECRET: JWT_SECRET,
    ARAGORA_LOG_LEVEL: "info",
    ...env,
  };
  // `null` removes a default (e.g. ARAGORA_JWT_SECRET: null runs with auth off).
  for (const [k, v] of Object.entries(fullEnv)) if (v === null) delete fullEnv[k];
  const server = {
    dir, apiPort, wsPort, env: fullEnv, url: `http://127.0.0.1:${apiPort}`, proc: null, logs: [],
    async start() {
      const logPath = join(dir, `server-${this.logs.length}.log`);
      this.logs.push(logPath);
      const out = openSync(logPath, "a");
      this.proc = spawn(BIN, ["serve", "--api-port", String(apiPort), "--ws-port", String(wsPort)], {
        env: fullEnv, stdio: ["ignore", out, out],
      });
      const proc = this.proc;
      let exited = null;
      proc.on("exit", (code, sig) => { exited = `exit ${code} ${sig || ""}`; });
      await waitFor(`aragora on ${apiPort}`, async () => {
        if (exited) throw new Error(`server ${exited}:\n${readFileSync(logPath, "utf8").slice(-3000)}`);
        const r = await fetch(this.url + "/api/health/live");
        return r.ok;
      }, { timeout: 60000 });
    },
    async stop() {
      if (!this.proc || this.proc.exitCode !== null) return;
      const proc = this.proc;
      const done = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGTERM");
      await Promise.race([done, sleep(15000)]);
      if (proc.exitCode === null) proc.kill("SIGKILL");
    },
    signal(sig) { this.proc.kill(sig); },
    log() { return this.logs.map((p) => readFileSync(p, "utf8")).join(""); },
    async api(method, path, { token, body, headers = {} } = {}) {
      const h = { ...headers };
      if (token) h.Authorization = "Bearer " + token;
      if (body !== undefined) h["Content-Type"] = "application/json";
      const r = await fetch(this.url + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await r.text();
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch { data = text; }
      return { status: r.status, data, headers: r.headers };
    },
    /** `aragora user create` through the binary, the password on stdin. Asynchronous, so a
     *  TCP proxy running in this process keeps forwarding meanwhile. */
    createUser(email, password, role) {
      return new Promise((res, rej) => {
        const p = spawn(BIN, ["user", "create", "--email", email, "--role", role], { env: fullEnv, stdio: ["pipe", "pipe", "pipe"] });
        let err = "";
        p.stderr.on("data", (d) => { err += d; });
        p.stdout.resume();
        p.on("exit", (code) => (code === 0 ? res() : rej(new Error(`user create ${email}: exit ${code}: ${err}`))));
        p.stdin.end(password + "\n");
      });
    },
    async login(email, password) {
      const r = await this.api("POST", "/api/auth/login", { body: { email, password } });
      if (r.status !== 200) throw new Error(`login ${email}: ${r.status} ${JSON.stringify(r.data)}`);
      return r.data.access_token;
    },
  };
  await server.start();
  return server;
}

/** A vendor-shaped fake Anthropic endpoint that always fails with the API's 500 error body. */
export async function failingAnthropic() {
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ type: "error", error: { type: "api_error", message: "Internal server error" } }));
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${srv.address().port}`, close: () => srv.close() };
}

/** A vendor-shaped fake OpenAI Chat Completions endpoint (`{base}/chat/completions`) that
 *  answers each debate phase, streamed (SSE, usage in the last chunk) or as one JSON body. */
export async function fakeOpenAI() {
  const srv = http.createServer((req, res) => {
    let raw = "";
    req.on("data", (d) => { raw += d; });
    req.on("end", () => {
      if (req.url !== "/v1/chat/completions" || req.headers.authorization !== "Bearer sk-e2e-openai") {
        res.writeHead(401, { "content-type": "application/json" });
        return res.end(JSON.stringify({ error: { message: "bad key or path", type: "invalid_request_error" } }));
      }
      const body = JSON.parse(raw);
      const system = body.messages[0].content;
      const user = body.messages[1].content;
      const line = user.split("\n").find((l) => l.startsWith("Aragora-Candidates: "));
      const candidates = line ? line.slice("Aragora-Candidates: ".length).split(", ") : [];
      let text = "[gpt] Use a modular monolith and measure before splitting.";
      if (system.includes("Aragora-Phase: vote")) {
        text = "```json\n" + JSON.stringify({ vote: candidates[0] || "", confidence: 0.8, reasoning: "most concrete" }) + "\n```";
      } else if (system.includes("Aragora-Phase: critique")) {
        text = JSON.stringify({ critiques: candidates.map((c) => ({ target: c, severity: 0.4, text: "needs numbers" })) });
      }
      const usage = { prompt_tokens: 1200, completion_tokens: 300 };
      if (body.stream !== true) {
        res.writeHead(200, { "content-type": "application/json" });
        return res.end(JSON.stringify({ id: "chatcmpl-e2e", object: "chat.completion", model: body.model, usage,
          choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: "stop" }] }));
      }
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const word of text.split(/(?<= )/)) {
        res.write(`data: ${JSON.stringify({ model: body.model, choices: [{ delta: { content: word } }] })}\n\n`);
      }
      res.write(`data: ${JSON.stringify({ model: body.model, choices: [], usage })}\n\n`);
      res.end("data: [DONE]\n\n");
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${srv.address().port}/v1`, close: () => srv.close() };
}

/** A TCP proxy that can be cut (every connection dropped, new ones refused) and restored. */
export async function tcpProxy(targetPort, targetHost = "127.0.0.1") {
  const sockets = new Set();
  let server;
  const port = await freePort();
  const listen = () => new Promise((r) => {
    server = net.createServer((client) => {
      const upstream = net.connect(targetPort, targetHost);
      sockets.add(client); sockets.add(upstream);
      client.pipe(upstream); upstream.pipe(client);
      const drop = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
      client.on("error", drop); upstream.on("error", drop); client.on("close", drop); upstream.on("close", drop);
    });
    server.listen(port, "127.0.0.1", r);
  });
  await listen();
  return {
    port,
    async cut() {
      server.close();
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    async restore() { await listen(); },
    close() { server.close(); for (const s of sockets) s.destroy(); },
  };
}

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"];

/** Debian's Chromium, headless, with a fresh profile (playwright makes a new user-data-dir per launch). */
export async function browser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
}

export function screenshotPath(name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  return join(SCREENSHOTS, name);
}
