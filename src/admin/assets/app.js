// Aragora admin console and developer portal.
//
// One file, no build step, no dependencies: the server embeds it. Every value from the
// server reaches the page through textContent/attributes (never innerHTML), and the strict
// Content-Security-Policy the server sends allows only this script.
//
// Sessions: the access token lives in this tab's memory only; the refresh token is an
// HttpOnly SameSite=Strict cookie the page cannot read (login with use_cookie). A reload or
// an expired access token is answered by POST /api/auth/refresh with that cookie.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- state
  const S = {
    config: { api_base: "", auth_enabled: true, password_login: true, version: "" },
    token: null, // access token (memory only)
    tokenKind: null, // "jwt" | "key"
    tokenExpiresAt: 0,
    me: null,
    refreshTimer: null,
    pollTimer: null,
    refreshing: null, // in-flight refresh promise (single flight)
    live: null, // live debate watcher
    lastProblem: null,
  };

  // ---------------------------------------------------------------- DOM helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const svg = (tag, attrs, ...children) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  };
  const fmtNum = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const fmtUsd = (n) => (n === null || n === undefined ? "–" : "$" + Number(n).toFixed(Number(n) < 1 ? 4 : 2));
  function fmtTime(t) {
    if (!t) return "–";
    const d = new Date(t);
    return isNaN(d) ? String(t) : d.toLocaleString();
  }
  function ago(t) {
    if (!t) return "–";
    const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
    if (!isFinite(s)) return String(t);
    if (s < 60) return `${Math.max(s, 0)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }
  function until(t) {
    const s = Math.round((new Date(t).getTime() - Date.now()) / 1000);
    if (!isFinite(s)) return String(t);
    if (s <= 0) return "now";
    if (s < 60) return `in ${s} s`;
    if (s < 3600) return `in ${Math.round(s / 60)} min`;
    return `in ${Math.round(s / 3600)} h`;
  }
  const short = (id) => (id && id.length > 12 ? id.slice(0, 8) + "…" : id || "–");
  function badge(text, tone) {
    return h("span", { class: "badge " + (tone || "") }, text);
  }
  function toneOf(status) {
    if (["ok", "healthy", "closed", "completed", "connected", "live", "redis", "memory"].includes(status)) return "ok";
    if (["degraded", "half_open", "queued", "running", "reconnecting", "no_consensus", "disabled", "connecting"].includes(status)) return "warn";
    if (["error", "unhealthy", "open", "failed", "timeout", "cancelled", "closed-error"].includes(status)) return "bad";
    return "";
  }
  function table(headers, rows, opts = {}) {
    const thead = h("thead", {}, h("tr", {}, headers.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label || c))));
    const tbody = h("tbody", {}, rows.map((r) => h("tr", r.attrs || {}, r.cells.map((c, i) =>
      h("td", { class: headers[i] && headers[i].num ? "num" : headers[i] && headers[i].wrap ? "wrap" : null }, c)))));
    return h("table", { "aria-label": opts.label || null }, thead, tbody);
  }
  function kv(pairs) {
    return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }
  function toast(text) {
    const box = $("toast");
    const item = h("div", {}, text);
    box.append(item);
    setTimeout(() => item.remove(), 4000);
  }

  // ---------------------------------------------------------------- API
  class ApiError extends Error {
    constructor(kind, message, extra = {}) {
      super(message);
      this.kind = kind; // unauthorized | forbidden | database | unreachable | cors | rate_limited | server | client
      Object.assign(this, extra);
    }
  }
  const apiBase = () => S.config.api_base || "";
  const crossOrigin = () => !!apiBase() && new URL(apiBase()).origin !== location.origin;

  // A fetch that failed before any response: tell a CORS refusal (the server answers a
  // no-cors probe) from an unreachable server (it does not).
  async function classifyNetworkError() {
    if (!crossOrigin()) return new ApiError("unreachable", `Cannot reach the server at ${location.origin}.`);
    try {
      await fetch(apiBase() + "/api/health/live", { mode: "no-cors", cache: "no-store", credentials: "omit" });
      return new ApiError("cors",
        `The API at ${apiBase()} refused this page's origin (${location.origin}). ` +
        `Add ${location.origin} to ARAGORA_ALLOWED_ORIGINS on that server and reload.`);
    } catch {
      return new ApiError("unreachable", `Cannot reach the server at ${apiBase()}.`);
    }
  }

  async function rawFetch(method, path, body, { auth = true, cookie = false } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && S.token) headers.Authorization = "Bearer " + S.token;
    let res;
    try {
      res = await fetch(apiBase() + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        credentials: cookie ? "include" : "omit", cache: "no-store",
      });
    } catch {
      throw await classifyNetworkError();
    }
    let data = null;
    const text = await res.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = { error: text.slice(0, 300) }; }
    }
    return { res, data };
  }

  function errorFrom(res, data) {
    const message = (data && data.error) || `HTTP ${res.status}`;
    const extra = { status: res.status, code: data && data.code, correlation: data && data.correlation_id, data };
    if (res.status === 401) return new ApiError("unauthorized", message, extra);
    if (res.status === 403) return new ApiError("forbidden", message, extra);
    if (res.status === 429) return new ApiError("rate_limited", message, { ...extra, retryAfter: res.headers.get("Retry-After") });
    if (res.status === 503 && data && data.code === "database_unavailable") return new ApiError("database", message, extra);
    // A gateway in front of the server answering for it: the server itself is not there.
    if ([502, 504].includes(res.status) || (res.status === 503 && !(data && data.code))) {
      return new ApiError("unreachable", `No answer from the server behind ${apiBase() || location.origin} (HTTP ${res.status} from the proxy in front of it).`, extra);
    }
    if (res.status >= 500) return new ApiError("server", message, extra);
    return new ApiError("client", message, extra);
  }

  // An API call with the session: a 401 on a JWT session refreshes once and retries.
  async function api(method, path, body, { okStatuses = [] } = {}) {
    let { res, data } = await rawFetch(method, path, body);
    if (res.status === 401 && S.tokenKind === "jwt") {
      const outcome = await refreshSession();
      if (outcome === "ok") ({ res, data } = await rawFetch(method, path, body));
      else if (outcome === "unavailable") throw new ApiError("unreachable", "The server could not renew the session just now; retrying.");
    }
    if (res.ok || okStatuses.includes(res.status)) {
      serverReachable();
      return data;
    }
    const err = errorFrom(res, data);
    if (err.kind === "unauthorized") sessionLost("Your session has ended. Sign in again.");
    if (err.kind !== "unreachable") serverReachable();
    throw err;
  }

  // ---------------------------------------------------------------- session
  function setToken(tokens) {
    S.token = tokens.access_token;
    S.tokenKind = "jwt";
    const ttl = Number(tokens.expires_in) || 900;
    S.tokenExpiresAt = Date.now() + ttl * 1000;
    clearTimeout(S.refreshTimer);
    // Refresh a minute early (or at 80 % of a short lifetime).
    const lead = Math.min(60, ttl * 0.2);
    S.refreshTimer = setTimeout(async () => {
      const outcome = await refreshSession();
      // Refused: the session is over. Unavailable: try again shortly.
      if (outcome === "refused" && S.token) sessionLost("Your session has ended. Sign in again.");
      if (outcome === "unavailable") S.refreshTimer = setTimeout(() => refreshSession(), 5000);
    }, Math.max(5, ttl - lead) * 1000);
  }

  // Rotate the refresh cookie for a new access token: "ok", "refused" (the session is over)
  // or "unavailable" (server or database down: the session may still be good).
  function refreshSession() {
    if (S.refreshing) return S.refreshing;
    S.refreshing = (async () => {
      try {
        const { res, data } = await rawFetch("POST", "/api/auth/refresh", {}, { auth: false, cookie: true });
        if (res.ok) {
          setToken(data);
          return "ok";
        }
        const err = errorFrom(res, data);
        if (err.kind === "database" || err.kind === "unreachable" || err.kind === "server") {
          if (err.kind !== "server") showProblem(err);
          return "unavailable";
        }
        return "refused";
      } catch (e) {
        if (e instanceof ApiError && (e.kind === "unreachable" || e.kind === "cors")) showProblem(e);
        return "unavailable";
      } finally {
        setTimeout(() => { S.refreshing = null; }, 0);
      }
    })();
    return S.refreshing;
  }

  function clearSession() {
    S.token = null; S.tokenKind = null; S.me = null;
    clearTimeout(S.refreshTimer);
    stopPolling();
    stopLive();
  }

  function sessionLost(message) {
    if (!S.config.auth_enabled) return;
    clearSession();
    showSignIn(message, "warn");
  }

  async function loadMe() {
    S.me = await api("GET", "/api/auth/me");
    $("who-email").textContent = S.me.email || S.me.id || "";
    const role = S.me.role || "none";
    $("who-role").textContent = role;
    $("who-role").className = "badge " + (role === "member" ? "" : "ok");
    $("sign-out").hidden = !S.config.auth_enabled;
    $("who").hidden = false;
    $("nav").hidden = false;
  }

  const isAdmin = () => S.me && (S.me.role === "admin" || S.me.role === "owner");

  async function signIn(ev) {
    ev.preventDefault();
    const email = $("signin-email").value.trim();
    const password = $("signin-password").value;
    if (!email || !password) {
      signInMessage(!email ? "Enter your email address." : "Enter your password.", "bad");
      (!email ? $("signin-email") : $("signin-password")).focus();
      return;
    }
    $("signin-submit").disabled = true;
    try {
      const { res, data } = await rawFetch("POST", "/api/auth/login", { email, password, use_cookie: true }, { auth: false, cookie: true });
      if (!res.ok) {
        const err = errorFrom(res, data);
        let text = err.message;
        if (res.status === 401) text = "Wrong email or password.";
        else if (res.status === 423) text = `This account is locked after repeated failed sign-ins. Try again in ${res.headers.get("Retry-After") || "a few"} seconds.`;
        else if (res.status === 429) text = `Too many failed sign-ins from here. Try again in ${res.headers.get("Retry-After") || "a few"} seconds.`;
        else if (res.status === 404) text = "Password sign-in is not configured on this server (no ARAGORA_JWT_SECRET). Use an API key instead.";
        else if (err.kind === "database") text = "The server cannot reach its database, so sign-in is unavailable. " + err.message;
        signInMessage(text, "bad");
        $("signin-password").select();
        return;
      }
      setToken(data);
      $("signin-password").value = "";
      await afterSignIn();
    } catch (e) {
      signInMessage(e.message, "bad");
    } finally {
      $("signin-submit").disabled = false;
    }
  }

  async function signInWithKey() {
    const key = $("signin-apikey").value.trim();
    if (!key) { signInMessage("Paste an API key first.", "bad"); $("signin-apikey").focus(); return; }
    S.token = key; S.tokenKind = "key";
    try {
      await loadMe();
      $("signin-apikey").value = "";
      await afterSignIn();
    } catch (e) {
      S.token = null; S.tokenKind = null;
      signInMessage(e.kind === "unauthorized" ? "That key was not accepted (revoked or mistyped)." : e.message, "bad");
    }
  }

  async function signOut() {
    if (S.tokenKind === "jwt") {
      try { await rawFetch("POST", "/api/auth/logout", {}, { auth: false, cookie: true }); } catch { /* signed out locally anyway */ }
    }
    clearSession();
    showSignIn("You have signed out.", "info");
  }

  function signInMessage(text, tone) {
    const m = $("signin-msg");
    m.textContent = text;
    m.className = "msg " + (tone === "bad" ? "" : tone || "");
    m.hidden = !text;
  }

  function showSignIn(message, tone) {
    $("who").hidden = true;
    $("nav").hidden = true;
    showView("signin");
    signInMessage(message || "", tone);
    $("signin-server").textContent = "Server: " + (apiBase() || location.origin);
    $("signin-key").hidden = !S.config.auth_enabled;
    $("signin-email").focus();
  }

  async function afterSignIn() {
    await loadMe();
    const wanted = location.hash.replace(/^#\/?/, "");
    if (!wanted || wanted === "signin") location.hash = isAdmin() ? "#/console" : "#/portal";
    route();
  }

  // ---------------------------------------------------------------- global problems
  function showProblem(err) {
    const b = $("banner");
    let title = "Problem:";
    if (err.kind === "unreachable") title = "Server unreachable.";
    else if (err.kind === "cors") title = "Blocked by CORS.";
    else if (err.kind === "database") title = "Database down.";
    $("banner-title").textContent = title;
    let text = err.message;
    if (err.kind === "unreachable") text += " Retrying every few seconds; the panels show the last data received.";
    if (err.kind === "database") text = "The server is running but cannot reach its database: debates, sign-in, keys and usage are unavailable until it is back. " + (err.detail || "");
    $("banner-text").textContent = text;
    b.className = "banner" + (err.kind === "database" ? " warn" : "");
    b.dataset.kind = err.kind;
    b.hidden = false;
    S.lastProblem = err.kind;
  }
  function serverReachable() {
    if (S.lastProblem === "unreachable" || S.lastProblem === "cors") {
      $("banner").hidden = true;
      S.lastProblem = null;
    }
  }
  function databaseRecovered() {
    if (S.lastProblem === "database") { $("banner").hidden = true; S.lastProblem = null; }
  }

  // ---------------------------------------------------------------- views and routing
  const VIEWS = ["loading", "signin", "console", "live", "portal"];
  function showView(name) {
    for (const v of VIEWS) $("view-" + v).hidden = v !== name;
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.route === name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.title = { console: "Console", live: "Live debate", portal: "Developer portal", signin: "Sign in" }[name] + " · Aragora";
  }

  let currentRoute = null;
  function route() {
    if (!S.me) return;
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    const name = ["console", "live", "portal"].includes(parts[0]) ? parts[0] : (isAdmin() ? "console" : "portal");
    const changed = currentRoute !== name;
    currentRoute = name;
    showView(name);
    stopPolling();
    if (name !== "live") stopLive();
    if (name === "console") startConsole();
    if (name === "live") startLiveView(parts[1] ? decodeURIComponent(parts[1]) : null);
    if (name === "portal") startPortal();
    if (changed) $(name + "-title").focus();
  }

  // ---------------------------------------------------------------- panels
  function panel(id) {
    const root = $(id);
    return {
      root,
      body: root.querySelector('[data-slot="body"]'),
      badge: root.querySelector('[data-slot="badge"]'),
      msg: root.querySelector(".panel-msg"),
      render(node, badgeText, tone) {
        this.body.replaceChildren(node);
        if (this.badge) { this.badge.textContent = badgeText ?? ""; this.badge.className = "badge " + (tone || ""); }
        this.msg.hidden = true;
        root.setAttribute("aria-busy", "false");
        root.dataset.state = "ready";
      },
      fail(err) {
        root.setAttribute("aria-busy", "false");
        root.dataset.state = "error";
        this.msg.replaceChildren(document.createTextNode(panelMessage(err)));
        this.msg.className = "panel-msg msg" + (err.kind === "database" ? " warn" : "");
        this.msg.hidden = false;
        if (!this.body.querySelector("table, dl, ol, svg, p.empty")) this.body.replaceChildren();
      },
    };
  }

  function panelMessage(err) {
    switch (err.kind) {
      case "forbidden": return `Your role is ${S.me ? S.me.role : "unknown"}; admin or owner needed. The server said: ${err.message}`;
      case "unauthorized": return "Your session has ended. Sign in again.";
      case "database": return "Database down: " + err.message;
      case "unreachable": return err.message + " Showing the last data received.";
      case "cors": return err.message;
      case "rate_limited": return `Rate limited; retrying after ${err.retryAfter || "a few"} s.`;
      default: return `${err.message}${err.correlation ? ` (correlation id ${err.correlation})` : ""}`;
    }
  }

  async function fill(id, loader) {
    const p = panel(id);
    try {
      await loader(p);
    } catch (e) {
      if (!(e instanceof ApiError)) e = new ApiError("client", String(e && e.message || e));
      if (["unreachable", "cors", "database"].includes(e.kind)) showProblem(e);
      if (e.kind === "forbidden" && currentRoute === "console" && !S.roleRecheck) {
        // The role may have changed since sign-in: read it again and redraw.
        S.roleRecheck = true;
        try { await loadMe(); if (!isAdmin()) { startConsole(); return; } } catch { /* shown below */ } finally { S.roleRecheck = false; }
      }
      p.fail(e);
    }
  }

  const empty = (text) => h("p", { class: "muted empty" }, text);

  // Health: 503 still carries the report, so it is read whatever the status.
  async function loadHealth(p) {
    const data = await api("GET", "/api/health", undefined, { okStatuses: [503] });
    const c = data.checks || {};
    const rows = [];
    if (c.database) rows.push({ attrs: { "data-check": "database" }, cells: ["Database", badge(c.database.status, toneOf(c.database.status)),
      [c.database.backend, c.database.latency_ms !== undefined ? `${c.database.latency_ms} ms` : null,
        c.database.pool ? `pool ${c.database.pool.size - c.database.pool.idle} busy, ${c.database.pool.size} open of ${c.database.pool.max}` : null,
        c.database.error].filter((x) => x !== null && x !== undefined).join(" · ")] });
    if (c.redis) rows.push({ attrs: { "data-check": "redis" }, cells: ["Redis", badge(c.redis.status, toneOf(c.redis.status)),
      [c.redis.latency_ms !== undefined ? `${c.redis.latency_ms} ms` : null, c.redis.error].filter(Boolean).join(" · ") || "–"] });
    if (c.websocket) rows.push({ attrs: { "data-check": "websocket" }, cells: ["WebSocket", badge(c.websocket.status, toneOf(c.websocket.status)), `${fmtNum(c.websocket.connections)} connections`] });
    if (c.circuit_breakers) {
      const cb = c.circuit_breakers;
      const st = cb.open > 0 ? "open" : cb.half_open > 0 ? "half_open" : "closed";
      rows.push({ attrs: { "data-check": "circuit_breakers" }, cells: ["Circuit breakers", badge(cb.status || st, toneOf(cb.status || st)), `${cb.open} open · ${cb.half_open} half-open`] });
    }
    for (const [name, check] of Object.entries(c)) {
      if (["database", "redis", "websocket", "circuit_breakers", "memory_mb", "active_debates"].includes(name)) continue;
      if (check && typeof check === "object") rows.push({ attrs: { "data-check": name }, cells: [name, badge(check.status || "–", toneOf(check.status)), check.error || ""] });
    }
    const facts = [
      ["Memory", c.memory_mb !== undefined ? `${fmtNum(c.memory_mb)} MB` : "–"],
      ["Active debates", fmtNum(c.active_debates)],
      ["Version", data.version || S.config.version || "–"],
      ["Uptime", data.uptime_seconds !== undefined ? `${fmtNum(Math.round(data.uptime_seconds))} s` : "–"],
    ];
    p.render(h("div", {}, table(["Check", "Status", "Detail"], rows, { label: "Health checks" }), h("h3", {}, "Server"), kv(facts)),
      data.status, toneOf(data.status));
    if (c.database && c.database.status !== "ok") {
      showProblem(new ApiError("database", "", { detail: c.database.error ? `(health: ${c.database.error})` : "" }));
    } else databaseRecovered();
  }

  async function loadBreakers(p) {
    const data = await api("GET", "/api/system/circuit-breakers");
    const list = data.circuit_breakers || [];
    const rows = list.map((b) => ({
      attrs: { "data-agent": b.agent },
      cells: [
        h("code", {}, b.agent),
        badge(b.state, toneOf(b.state)),
        fmtNum(b.consecutive_failures),
        h("div", {}, b.last_failure ? `${b.last_failure.kind} · ${ago(b.last_failure.at)}` : "–",
          b.next_probe_at ? h("div", { class: "small muted" }, `next probe ${until(b.next_probe_at)}`) : null),
        h("button", { type: "button", class: "secondary", disabled: b.state === "closed", "aria-label": `Reset the circuit breaker of ${b.agent}`,
          onclick: (ev) => resetBreaker(b.agent, ev.currentTarget) }, "Reset"),
      ],
    }));
    const open = data.open || 0, half = data.half_open || 0;
    p.render(list.length ? table(["Agent", "State", { label: "Failures", num: true }, "Last failure", { label: "Action" }], rows, { label: "Circuit breakers" })
      : empty("No agent has been called since the server started; an agent's breaker appears with its first call."), open ? `${open} open` : half ? `${half} half-open` : "all closed", open ? "bad" : half ? "warn" : "ok");
  }

  async function resetBreaker(agent, button) {
    button.disabled = true;
    try {
      await api("POST", `/api/agents/${encodeURIComponent(agent)}/reset-circuit`);
      toast(`Circuit breaker of ${agent} reset to closed.`);
    } catch (e) {
      toast(`Could not reset ${agent}: ${panelMessage(e)}`);
    }
    await fill("panel-breakers", loadBreakers);
  }

  async function loadErrors(p) {
    const data = await api("GET", "/api/system/errors?limit=25");
    const list = data.errors || [];
    p.render(list.length ? table(["Time", "Level", { label: "Message", wrap: true }], list.map((e) => ({
      cells: [h("span", { title: e.time }, ago(e.time)), badge(e.level, e.level === "ERROR" ? "bad" : "warn"),
        h("div", {}, h("div", { class: "mono small muted" }, e.logger + (e.correlation_id ? ` · ${e.correlation_id}` : "")), e.message)],
    })), { label: "Recent errors" }) : empty("No warnings or errors since the server started."),
    `${fmtNum(data.total)} of ${fmtNum(data.capacity)}`, data.total ? "warn" : "ok");
  }

  async function loadRateLimits(p) {
    const [config, system] = await Promise.all([api("GET", "/api/rate-limits/config"), api("GET", "/api/system/rate-limits")]);
    const backend = config.disabled ? "disabled" : config.active_backend;
    const parts = [
      kv([
        ["Backend", `${config.backend}${config.active_backend !== config.backend ? ` (using ${config.active_backend}: Redis unreachable)` : ""}`],
        ["Redis connected", config.redis_connected ? "yes" : "no"],
        ["Whitelist", (config.whitelist || []).join(", ") || "none"],
        ["Trusted proxies", (config.trusted_proxies || []).join(", ") || "none"],
        ["Last reload", config.last_reload ? `${fmtTime(config.last_reload.at)} (${config.last_reload.result}${config.last_reload.error ? ": " + config.last_reload.error : ""})` : "never since start"],
      ]),
      h("h3", {}, "Rules"),
      table(["Rule", { label: "Limit / min", num: true }, "Applies to"], (config.rules || []).map((r) => ({
        cells: [h("code", {}, r.name), fmtNum(r.limit), r.applies_to],
      })), { label: "Rate-limit rules" }),
      h("h3", {}, `Most-limited keys (last ${Math.round((system.window_seconds || 0) / 60)} min)`),
      (system.top_limited || []).length
        ? table(["Key", "Rule", { label: "429s", num: true }, "Last"], system.top_limited.map((k) => ({
          attrs: { "data-limited-key": k.key },
          cells: [h("code", {}, k.key), k.rule, fmtNum(k.hits), ago(k.last_hit)],
        })), { label: "Most-limited keys" })
        : empty("Nobody has been limited in this window."),
    ];
    p.render(h("div", {}, parts), backend, config.disabled ? "warn" : config.active_backend !== config.backend ? "warn" : "ok");
  }

  async function loadWebSocket(p) {
    const s = await api("GET", "/api/ws/stats");
    const lim = s.limits || {};
    p.render(kv([
      ["Connections", `${fmtNum(s.connections)} (peak ${fmtNum(s.connections_peak)})`],
      ["Most per IP", `${fmtNum(s.per_ip_max)} (peak ${fmtNum(s.per_ip_peak)})`],
      ["Subscriptions", fmtNum(s.subscriptions)],
      ["Debates watched", fmtNum(s.watched_debates)],
      ["Messages sent", fmtNum(s.messages_sent)],
      ["Slow clients dropped", fmtNum(s.slow_clients_dropped)],
      ["Connections refused", fmtNum(s.rejected_connections)],
      ["Errors", fmtNum(s.errors)],
      ["Limits", `${fmtNum(lim.max_connections)} total · ${fmtNum(lim.max_per_ip)} per IP`],
      ["Event bus", s.event_bus ? `${s.event_bus.backend}${s.event_bus.connected === false ? " (disconnected)" : ""}` : "–"],
    ]), `${fmtNum(s.connections)} open`, "ok");
  }

  async function loadDebates(p) {
    const [running, queued] = await Promise.all([
      api("GET", "/api/debates?status=running&limit=50"), api("GET", "/api/debates?status=queued&limit=50")]);
    const list = [...(running.debates || []), ...(queued.debates || [])];
    const rows = list.map((d) => ({
      attrs: { "data-debate": d.id },
      cells: [badge(d.status, toneOf(d.status)), h("div", {}, h("div", { class: "wrap" }, d.task), h("div", { class: "mono small muted" }, d.id)),
        (d.agents || []).join(", "),
        d.status === "running" ? h("span", { class: "mono small" }, d.instance || "awaiting resume") : "–",
        d.started_at ? ago(d.started_at) : `queued ${ago(d.created_at)}`,
        h("a", { href: `#/live/${encodeURIComponent(d.id)}`, "aria-label": `Watch debate ${d.id} live` }, "Watch")],
    }));
    const nRun = (running.debates || []).length, nQ = (queued.debates || []).length;
    p.render(list.length ? table(["Status", { label: "Task", wrap: true }, "Agents", "Instance", "Since", ""], rows, { label: "Active and queued debates" })
      : empty("No debate is running or queued."), `${nRun} running · ${nQ} queued`, nRun || nQ ? "warn" : "");
  }

  async function loadLeaderboard(p) {
    const data = await api("GET", "/api/leaderboard?limit=20");
    const list = data.ratings || [];
    p.render(list.length ? table([{ label: "#", num: true }, "Agent", { label: "Rating", num: true }, { label: "Games", num: true }, "W / L / D"],
      list.map((r) => ({ attrs: { "data-agent": r.agent }, cells: [r.rank, h("code", {}, r.agent), r.rating.toFixed(1), fmtNum(r.games), `${r.wins} / ${r.losses} / ${r.draws}`] })),
      { label: "Leaderboard" }) : empty("No ratings yet. Ratings come from finished debates between different agents: a debate whose seats are all the same agent (all demo, say) rates no one."), `${list.length} agents`, "");
  }

  // Finished debates: newest first, filtered by status, paged with the API's cursor.
  const FINISHED = ["completed", "no_consensus", "timeout", "failed", "cancelled", "budget_exceeded"];
  S.finished = { cursors: [null], page: 0 };
  async function loadFinished(p) {
    const status = $("finished-status").value;
    const cursor = S.finished.cursors[S.finished.page];
    const q = new URLSearchParams({ limit: "10" });
    if (status) q.set("status", status);
    if (cursor) q.set("cursor", cursor);
    // Without a status filter, ended debates are read a page at a time and the unfinished
    // ones (shown in the panel above) left out.
    const data = await api("GET", `/api/debates?${q}`);
    const list = (data.debates || []).filter((d) => status || FINISHED.includes(d.status));
    S.finished.next = data.next_cursor || null;
    const rows = list.map((d) => ({
      attrs: { "data-debate": d.id },
      cells: [badge(d.status, toneOf(d.status)), h("div", {}, h("div", { class: "wrap" }, d.task), h("div", { class: "mono small muted" }, d.id)),
        d.finished_at ? ago(d.finished_at) : "–",
        h("a", { href: `#/live/${encodeURIComponent(d.id)}`, "aria-label": `Open debate ${d.id}` }, "Open")],
    }));
    const nav = h("div", { class: "inline-form pager" },
      h("button", { type: "button", id: "finished-prev", disabled: S.finished.page === 0, onclick: () => { S.finished.page -= 1; fill("panel-finished", loadFinished); } }, "Newer"),
      h("span", { class: "muted small" }, `page ${S.finished.page + 1}`),
      h("button", { type: "button", id: "finished-next", disabled: !S.finished.next, onclick: () => { S.finished.cursors[S.finished.page + 1] = S.finished.next; S.finished.page += 1; fill("panel-finished", loadFinished); } }, "Older"));
    p.render(h("div", {}, list.length ? table(["Status", { label: "Task", wrap: true }, "Ended", ""], rows, { label: "Finished debates" })
      : empty(status ? `No ${status} debates on this page.` : "No finished debates on this page."), nav), `page ${S.finished.page + 1}`, "");
  }

  const CONSOLE_PANELS = [
    ["panel-health", loadHealth], ["panel-breakers", loadBreakers], ["panel-debates", loadDebates],
    ["panel-errors", loadErrors], ["panel-ratelimits", loadRateLimits], ["panel-websocket", loadWebSocket],
    ["panel-leaderboard", loadLeaderboard], ["panel-finished", loadFinished],
  ];

  async function refreshConsole() {
    if (!isAdmin()) return;
    await Promise.all(CONSOLE_PANELS.map(([id, loader]) => fill(id, loader)));
    $("refreshed-at").textContent = "Updated " + new Date().toLocaleTimeString();
  }

  function startConsole() {
    const denied = $("console-denied");
    if (!isAdmin()) {
      stopPolling();
      denied.textContent = `Your role is ${S.me.role}; the admin console needs admin or owner. The developer portal is open to you.`;
      denied.hidden = false;
      $("console-grid").hidden = true;
      return;
    }
    denied.hidden = true;
    $("console-grid").hidden = false;
    refreshConsole();
    schedulePoll(refreshConsole);
  }

  function schedulePoll(fn) {
    stopPolling();
    S.pollTimer = setInterval(() => {
      if (document.hidden || !$("auto-refresh").checked) return;
      fn();
    }, REFRESH_MS);
  }
  function stopPolling() { clearInterval(S.pollTimer); S.pollTimer = null; }

  // ---------------------------------------------------------------- developer portal
  let usageWanted = null;
  function startPortal() {
    fill("panel-account", loadAccount);
    fill("panel-apikey", (p) => renderKey(p, null));
    if (!usageWanted) {
      const now = new Date();
      $("usage-from").value = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().slice(0, 10);
      $("usage-to").value = now.toISOString().slice(0, 10);
      usageWanted = true;
    }
    fill("panel-usage", loadUsage);
  }

  async function loadAccount(p) {
    await loadMe();
    const m = S.me;
    p.render(kv([["Email", m.email || "–"], ["Role", m.role || "–"], ["Kind", m.kind || "–"], ["User id", h("code", {}, m.id)], ["Member since", fmtTime(m.created_at)]]));
  }

  async function renderKey(p, fresh) {
    if (!S.config.auth_enabled) {
      // Without auth there is nothing to authenticate: the server refuses to issue keys.
      p.render(h("div", { id: "keys-auth-off" },
        empty("Auth is off on this server, so API keys are not needed: every caller on this host acts as the local owner. Set ARAGORA_JWT_SECRET (and create users with `aragora user create`) to use accounts and keys.")));
      return;
    }
    await loadMe();
    const key = S.me.api_key;
    const parts = [];
    if (fresh) {
      const input = h("input", { id: "new-key", readonly: true, value: fresh, "aria-label": "Your new API key" });
      parts.push(h("div", { class: "msg warn", role: "status" }, "Copy this key now: it is shown only once and cannot be shown again."),
        h("div", { class: "key-once" }, input, h("button", { type: "button", id: "copy-key", onclick: () => copyKey(input) }, "Copy")));
    }
    if (key) {
      parts.push(kv([["Active key", h("code", { id: "key-prefix" }, key.prefix + "…")], ["Created", fmtTime(key.created_at)], ["Last used", key.last_used_at ? ago(key.last_used_at) : "never"]]));
    } else {
      parts.push(empty("You have no active API key."));
    }
    const actions = h("div", { class: "inline-form", id: "key-actions" });
    actions.append(h("button", { type: "button", id: "generate-key", onclick: () => generateKey(p, !!key) }, key ? "Replace key" : "Generate key"));
    if (key) actions.append(h("button", { type: "button", class: "danger", id: "revoke-key", onclick: () => confirmRevoke(p, actions) }, "Revoke key"));
    parts.push(h("p", { class: "muted small" }, "Use it as Authorization: Bearer <key> or X-API-Key: <key>. Generating a new key revokes the old one."), actions);
    p.render(h("div", {}, parts));
    if (fresh) $("new-key").select();
  }

  async function generateKey(p, replacing) {
    try {
      const data = await api("POST", "/api/auth/api-key");
      toast(replacing ? "New API key created; the previous key is revoked." : "API key created.");
      await renderKey(p, data.api_key || data.key);
      $("copy-key").focus();
    } catch (e) {
      p.fail(e);
    }
  }

  function confirmRevoke(p, actions) {
    actions.replaceChildren(
      h("span", {}, "Revoke the key? Programs using it stop working at once."),
      h("button", { type: "button", class: "danger", id: "revoke-confirm", onclick: () => revokeKey(p) }, "Yes, revoke"),
      h("button", { type: "button", class: "secondary", id: "revoke-cancel", onclick: () => fill("panel-apikey", (q) => renderKey(q, null)) }, "Cancel"));
    $("revoke-confirm").focus();
  }

  async function revokeKey(p) {
    try {
      await api("DELETE", "/api/auth/api-key", undefined, { okStatuses: [204, 404] });
      toast("API key revoked.");
      await renderKey(p, null);
      $("generate-key").focus();
    } catch (e) {
      p.fail(e);
    }
  }

  async function copyKey(input) {
    try {
      await navigator.clipboard.writeText(input.value);
    } catch {
      input.select();
      document.execCommand && document.execCommand("copy");
    }
    toast("Key copied to the clipboard.");
  }

  async function loadUsage(p) {
    const from = $("usage-from").value, to = $("usage-to").value;
    const q = new URLSearchParams();
    if (from) q.set("from", from);
    if (to) q.set("to", to);
    const u = await api("GET", "/api/billing/usage?" + q.toString());
    const lines = (u.by_provider || []).map((l) => ({ ...l, label: `${l.provider} / ${l.model}` }));
    const totals = h("div", { class: "totals" },
      h("div", {}, "Debates", h("strong", { id: "usage-debates" }, fmtNum(u.debates))),
      h("div", {}, "Calls", h("strong", {}, fmtNum(u.calls))),
      h("div", {}, "Input tokens", h("strong", { id: "usage-input" }, fmtNum(u.input_tokens))),
      h("div", {}, "Output tokens", h("strong", { id: "usage-output" }, fmtNum(u.output_tokens))),
      h("div", {}, "Cost", h("strong", { id: "usage-cost" }, fmtUsd(u.cost_usd))));
    const period = h("p", { class: "muted small" }, `${fmtTime(u.period && u.period.from)} – ${fmtTime(u.period && u.period.to)}` +
      (u.estimated_tokens ? " · some token counts are estimates (the provider did not report usage)" : ""));
    if (!lines.length) {
      p.render(h("div", {}, totals, period, empty("No usage in this period: start a debate and it is counted here.")));
      return;
    }
    p.render(h("div", {}, totals, period, usageChart(lines),
      table(["Provider / model", { label: "Calls", num: true }, { label: "Input", num: true }, { label: "Output", num: true }, { label: "Cost", num: true }],
        lines.map((l) => ({ attrs: { "data-model": l.label }, cells: [l.label, fmtNum(l.calls), fmtNum(l.input_tokens), fmtNum(l.output_tokens), fmtUsd(l.cost_usd)] })),
        { label: "Usage by provider and model" })));
  }

  // Horizontal bars: tokens (input + output stacked) and cost per provider/model.
  function usageChart(lines) {
    const rowH = 40, labelW = 180, barW = 420, width = labelW + barW + 90;
    const maxTok = Math.max(1, ...lines.map((l) => l.input_tokens + l.output_tokens));
    const maxCost = Math.max(1e-9, ...lines.map((l) => l.cost_usd));
    const height = lines.length * rowH + 10;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
      "aria-label": "Tokens and cost by provider and model: " + lines.map((l) => `${l.label} ${l.input_tokens + l.output_tokens} tokens, ${fmtUsd(l.cost_usd)}`).join("; ") });
    lines.forEach((l, i) => {
      const y = i * rowH + 4;
      const wIn = (l.input_tokens / maxTok) * barW, wOut = (l.output_tokens / maxTok) * barW;
      const wCost = (l.cost_usd / maxCost) * barW;
      chart.append(
        svg("text", { x: 0, y: y + 14 }, l.label.length > 26 ? l.label.slice(0, 25) + "…" : l.label),
        svg("rect", { class: "bar-in", x: labelW, y, width: Math.max(wIn, 0.5), height: 14 }, svg("title", {}, `${l.label}: ${l.input_tokens} input tokens`)),
        svg("rect", { class: "bar-out", x: labelW + wIn, y, width: Math.max(wOut, 0.5), height: 14 }, svg("title", {}, `${l.label}: ${l.output_tokens} output tokens`)),
        svg("text", { x: labelW + wIn + wOut + 6, y: y + 12 }, fmtNum(l.input_tokens + l.output_tokens)),
        svg("rect", { class: "bar-cost", x: labelW, y: y + 18, width: Math.max(wCost, 0.5), height: 10 }, svg("title", {}, `${l.label}: ${fmtUsd(l.cost_usd)}`)),
        svg("text", { x: labelW + wCost + 6, y: y + 27 }, fmtUsd(l.cost_usd)));
    });
    return h("figure", { class: "chart", id: "usage-chart" },
      h("div", { class: "legend" }, h("span", { class: "l-in" }, "input tokens"), h("span", { class: "l-out" }, "output tokens"), h("span", { class: "l-cost" }, "cost (USD)")),
      chart);
  }

  // ---------------------------------------------------------------- live debate
  function wsUrl(debateId, since) {
    const base = new URL(apiBase() || location.origin);
    base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    base.pathname = "/ws";
    base.search = new URLSearchParams({ debate_id: debateId, since: String(since) }).toString();
    return base.toString();
  }

  async function startLiveView(debateId) {
    fillDebatePicker(debateId);
    if (debateId && (!S.live || S.live.id !== debateId)) watch(debateId);
    if (!debateId && !S.live) { $("live-conn").textContent = "idle"; }
  }

  async function fillDebatePicker(selected) {
    const sel = $("live-select");
    try {
      const data = await api("GET", "/api/debates?limit=25");
      const opts = [h("option", { value: "" }, "Choose a debate…")];
      for (const d of data.debates || []) {
        opts.push(h("option", { value: d.id, selected: d.id === selected }, `[${d.status}] ${d.task.slice(0, 60)} (${short(d.id)})`));
      }
      if (selected && !(data.debates || []).some((d) => d.id === selected)) opts.push(h("option", { value: selected, selected: true }, selected));
      sel.replaceChildren(...opts);
    } catch (e) {
      liveMessage(panelMessage(e));
    }
  }

  function liveMessage(text, tone) {
    const m = $("live-msg");
    m.textContent = text || "";
    m.className = text ? "msg-slot msg " + (tone || "") : "msg-slot";
  }

  function setConn(state) {
    const el = $("live-conn");
    el.textContent = state;
    el.className = "badge " + toneOf(state === "live" ? "live" : state === "ended" ? "completed" : state);
  }

  function stopLive() {
    if (!S.live) return;
    S.live.stopped = true;
    clearTimeout(S.live.retryTimer);
    if (S.live.ws) S.live.ws.close(1000);
    S.live = null;
  }

  function watch(debateId) {
    stopLive();
    $("live-events").replaceChildren();
    $("live-task").textContent = "";
    $("live-status").textContent = "–";
    $("live-seq").textContent = "–";
    $("live-reconnects").textContent = "0";
    $("live-receipt").hidden = true;
    liveMessage("");
    const live = { id: debateId, lastSeq: 0, attempts: 0, reconnects: 0, ended: false, stopped: false, ws: null, streams: new Map() };
    S.live = live;
    setControls(null);
    api("GET", `/api/debates/${encodeURIComponent(debateId)}`).then((d) => {
      if (S.live === live) { $("live-task").textContent = d.task; setLiveStatus(d.status); }
    }).catch((e) => { if (S.live === live) liveMessage(e.status === 404 ? `No debate ${debateId} (or it is not yours).` : panelMessage(e)); });
    connectLive(live);
  }

  /** The status line and which steering controls apply to it. */
  function setLiveStatus(status) {
    $("live-status").textContent = status || "–";
    setControls(status);
    if (status === "completed" || status === "no_consensus") showReceipt(S.live);
    else $("live-receipt").hidden = true;
  }

  /**
   * A decided debate's signed receipt: verdict, signing key, and whether the server verifies
   * its signature, with a link to the signed ODR document. The receipt is issued just after
   * the end, so a 404 is retried a few times.
   */
  async function showReceipt(live) {
    if (!live || live.receiptShown) return;
    live.receiptShown = true;
    const path = `/api/debates/${encodeURIComponent(live.id)}/receipt`;
    let receipt = null;
    for (let attempt = 0; attempt < 6 && S.live === live; attempt += 1) {
      try { receipt = await api("GET", path); break; } catch (e) {
        if (e.status !== 404) { live.receiptShown = false; return; }
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    if (!receipt || S.live !== live) { live.receiptShown = false; return; }
    const exportPath = `/api/v2/receipts/${encodeURIComponent(receipt.receipt_id)}/export?format=odr`;
    $("receipt-id").textContent = receipt.receipt_id;
    $("receipt-verdict").textContent = `${receipt.verdict} (confidence ${Number(receipt.confidence).toFixed(2)})`;
    $("receipt-key").textContent = receipt.key_id || "unsigned";
    const link = $("receipt-download");
    link.href = apiBase() + exportPath;
    link.setAttribute("download", `${receipt.receipt_id}.odr.json`);
    const badgeEl = $("receipt-verified");
    badgeEl.textContent = "checking…";
    badgeEl.className = "badge";
    $("live-receipt").hidden = false;
    try {
      const doc = await api("GET", exportPath);
      const result = await api("POST", "/api/v2/receipts/verify", doc);
      if (S.live !== live) return;
      badgeEl.textContent = result.verified ? "verified" : (receipt.key_id ? "NOT verified" : "unsigned");
      badgeEl.className = "badge " + toneOf(result.verified ? "ok" : receipt.key_id ? "failed" : "degraded");
      badgeEl.title = (result.checks || []).map((c) => `${c.name}: ${c.status}`).join("\n");
    } catch (e) {
      if (S.live === live) { badgeEl.textContent = "unknown"; badgeEl.title = panelMessage(e); }
    }
  }

  function setControls(status) {
    const box = $("live-controls");
    const open = ["queued", "running", "paused"].includes(status);
    box.hidden = !open;
    $("live-pause").disabled = !(status === "queued" || status === "running");
    $("live-resume").disabled = status !== "paused";
  }

  async function steer(action, body) {
    const live = S.live;
    if (!live) return;
    const path = action === "inject" ? "intervention/inject" : action;
    try {
      const r = await api("POST", `/api/debates/${encodeURIComponent(live.id)}/${path}`, body);
      if (S.live !== live) return;
      if (action === "pause") {
        if (r.status === "paused") setLiveStatus("paused");
        liveMessage(r.status === "paused" ? "Paused." : "Pausing at the next phase boundary (the agent calls under way finish first)…", "info");
      } else if (action === "resume") {
        setLiveStatus(r.status || "queued");
        liveMessage("Resumed: the debate is queued and continues where it stopped.", "info");
      } else {
        $("live-inject-text").value = "";
        liveMessage("Message sent: every agent sees it from the next phase on.", "info");
      }
    } catch (e) {
      if (S.live === live) liveMessage(e.status === 409 ? (e.message || "The debate has ended.") : panelMessage(e), "warn");
    }
  }

  async function connectLive(live) {
    if (live.stopped) return;
    setConn(live.attempts ? "reconnecting" : "connecting");
    // A JWT close to expiry is refreshed before it is offered to the socket.
    if (S.tokenKind === "jwt" && Date.now() > S.tokenExpiresAt - 30000) await refreshSession();
    const protocols = S.token ? ["access_token." + S.token] : [];
    let ws;
    try {
      ws = new WebSocket(wsUrl(live.id, live.lastSeq), protocols);
    } catch (e) {
      liveMessage("Cannot open a WebSocket: " + e.message);
      return scheduleReconnect(live);
    }
    live.ws = ws;
    ws.onopen = () => { live.attempts = 0; };
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      onLiveEvent(live, ev);
    };
    ws.onclose = (c) => {
      if (live.ws !== ws) return;
      live.ws = null;
      if (live.stopped || live.ended) return;
      if (c.code === 1008) {
        // Credentials refused: refresh once, else the session is over.
        refreshSession().then((o) => o === "refused" ? sessionLost("Your session has ended. Sign in again.") : scheduleReconnect(live));
        return;
      }
      const why = { 1001: "server shutting down", 1012: "server reloading", 1013: "the server cannot check credentials now (database down)", 4008: "too slow to keep up", 4029: "connection limit reached" }[c.code] || `closed (${c.code})`;
      liveMessage(`Connection lost: ${why}. Reconnecting and resuming after event ${live.lastSeq}…`, "warn");
      scheduleReconnect(live);
    };
  }

  function scheduleReconnect(live) {
    if (live.stopped) return;
    live.attempts += 1;
    live.reconnects += 1;
    $("live-reconnects").textContent = String(live.reconnects);
    setConn("reconnecting");
    const delay = Math.min(30000, 500 * 2 ** Math.min(live.attempts, 6)) * (0.5 + Math.random() / 2);
    live.retryTimer = setTimeout(() => connectLive(live), delay);
  }

  function onLiveEvent(live, ev) {
    if (ev.type === "connection_info" || ev.type === "heartbeat" || ev.type === "pong") return;
    if (ev.type === "error") {
      const d = ev.data || {};
      liveMessage(d.code === "debate_not_found" ? `No debate ${live.id} (or it is not yours).` : (d.message || "error from the server"));
      if (d.code === "debate_not_found") { live.stopped = true; setConn("closed-error"); if (live.ws) live.ws.close(1000); }
      return;
    }
    if (ev.type === "subscribed") {
      setConn("live");
      if (live.reconnects) liveMessage(`Reconnected; resumed after event ${live.lastSeq}.`, "info");
      setLiveStatus(ev.status || ev.data && ev.data.status || "–");
      return;
    }
    if (ev.type === "token_delta") return streamDelta(live, ev);
    if (typeof ev.seq !== "number") return;
    if (ev.seq <= live.lastSeq) return; // already shown (replay overlap)
    live.lastSeq = ev.seq;
    $("live-seq").textContent = `#${ev.seq} ${ev.type}`;
    renderEvent(live, ev);
    if (ev.type === "debate_end") {
      live.ended = true;
      setConn("ended");
      setLiveStatus((ev.data && ev.data.status) || "ended");
      if (live.ws) live.ws.close(1000);
    } else if (ev.type === "debate_start" || ev.type === "debate_resumed") {
      setLiveStatus("running");
    } else if (ev.type === "debate_paused") {
      setLiveStatus("paused");
    }
  }

  function streamDelta(live, ev) {
    const key = `${ev.agent}|${ev.round}`;
    let item = live.streams.get(key);
    if (!item) {
      item = h("li", { class: "streaming", "aria-hidden": "true" }, h("div", { class: "meta" }, h("strong", {}, ev.agent), h("span", {}, "writing…")), h("div", { class: "body" }));
      live.streams.set(key, item);
      $("live-events").append(item);
    }
    item.querySelector(".body").textContent += (ev.data && ev.data.delta) || "";
  }

  function renderEvent(live, ev) {
    const d = ev.data || {};
    const list = $("live-events");
    if (ev.agent) {
      const key = `${ev.agent}|${ev.round}`;
      const s = live.streams.get(key);
      // The call a stream shows has ended once the seat's next durable event of that round
      // arrives (its message, critique, vote or failure).
      if (s) { s.remove(); live.streams.delete(key); }
    }
    if (ev.type === "debate_end" || ev.type === "debate_paused") {
      // Calls cut short by the end or the pause leave no half-written text behind.
      for (const s of live.streams.values()) s.remove();
      live.streams.clear();
    }
    const meta = (...bits) => h("div", { class: "meta" }, h("span", { class: "mono" }, `#${ev.seq}`), ...bits.filter(Boolean));
    let item;
    switch (ev.type) {
      case "round_start":
        item = h("li", { class: "round" }, `Round ${ev.round ?? d.round}${d.of ? ` of ${d.of}` : ""}`);
        break;
      case "agent_message":
        item = h("li", { class: d.role || "proposal" }, meta(h("strong", {}, ev.agent), h("span", {}, d.role), d.model ? h("span", {}, d.model) : null), h("div", { class: "body" }, d.content || ""));
        break;
      case "critique":
        item = h("li", { class: "critique" }, meta(h("strong", {}, `${ev.agent} → ${d.target || "everyone"}`), d.severity !== null && d.severity !== undefined ? h("span", {}, `severity ${d.severity}`) : null, h("span", {}, "critique")), h("div", { class: "body" }, d.text || ""));
        break;
      case "vote":
        item = h("li", { class: "vote" }, meta(h("strong", {}, `${ev.agent} votes for ${d.choice || d.voted_for || "?"}`), d.confidence !== undefined ? h("span", {}, `confidence ${Number(d.confidence).toFixed(2)}`) : null, d.parsed === false ? h("span", {}, "unparsed") : null), h("div", { class: "body" }, d.reasoning || d.raw || ""));
        break;
      case "convergence":
        item = h("li", { class: "convergence" }, meta(h("strong", {}, `Convergence: ${d.status}`), d.mean !== undefined ? h("span", {}, `mean similarity ${Number(d.mean).toFixed(2)}`) : null));
        break;
      case "consensus":
        item = h("li", { class: "consensus" }, meta(h("strong", {}, d.reached ? `Consensus reached: ${d.winner}` : "No consensus"), d.share !== undefined && d.share !== null ? h("span", {}, `share ${Number(d.share).toFixed(2)}`) : null, d.mode ? h("span", {}, d.mode) : null));
        break;
      case "agent_error":
      case "circuit_open":
        item = h("li", { class: ev.type }, meta(h("strong", {}, `${ev.agent}: ${ev.type === "circuit_open" ? "circuit open" : d.kind || "error"}`), d.phase ? h("span", {}, d.phase) : null), h("div", { class: "body" }, d.error || d.message || ""));
        break;
      case "debate_paused":
        item = h("li", { class: "debate_paused" }, meta(h("strong", {}, "Paused"), d.rounds_used !== undefined ? h("span", {}, `after round ${d.rounds_used}`) : null));
        break;
      case "debate_resumed":
        item = h("li", { class: "debate_resumed" }, meta(h("strong", {}, "Resumed"), d.reason ? h("span", {}, d.reason.replace(/_/g, " ")) : null, d.instance ? h("span", { class: "mono" }, d.instance) : null));
        break;
      case "intervention":
        item = h("li", { class: "intervention" }, meta(h("strong", {}, "Moderator"), h("span", {}, "every agent sees this from the next phase")), h("div", { class: "body" }, d.content || ""));
        break;
      case "debate_end":
        item = h("li", { class: "debate_end" }, meta(h("strong", {}, `Debate ended: ${d.status}`), d.winner ? h("span", {}, `winner ${d.winner}`) : null, d.duration_ms !== undefined ? h("span", {}, `${(d.duration_ms / 1000).toFixed(1)} s`) : null), d.error ? h("div", { class: "body" }, d.error) : null);
        break;
      default:
        item = h("li", { class: ev.type }, meta(h("strong", {}, ev.type.replace(/_/g, " ")), ev.agent ? h("span", {}, ev.agent) : null));
    }
    item.dataset.seq = String(ev.seq);
    item.dataset.type = ev.type;
    list.append(item);
  }

  // ---------------------------------------------------------------- start
  async function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("signin-key-submit").addEventListener("click", signInWithKey);
    $("signin-apikey").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); signInWithKey(); } });
    $("sign-out").addEventListener("click", signOut);
    $("refresh-now").addEventListener("click", () => refreshConsole());
    $("live-pick").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = $("live-select").value;
      if (id) location.hash = `#/live/${encodeURIComponent(id)}`;
    });
    $("live-pause").addEventListener("click", () => steer("pause"));
    $("live-resume").addEventListener("click", () => steer("resume"));
    $("live-inject").addEventListener("submit", (e) => {
      e.preventDefault();
      const content = $("live-inject-text").value.trim();
      if (!content) { liveMessage("Write the message first.", "warn"); return; }
      steer("inject", { content, role: "moderator" });
    });
    $("finished-status").addEventListener("change", () => {
      S.finished = { cursors: [null], page: 0 };
      fill("panel-finished", loadFinished);
    });
    $("usage-period").addEventListener("submit", (e) => { e.preventDefault(); fill("panel-usage", loadUsage); });
    window.addEventListener("hashchange", route);
    document.addEventListener("visibilitychange", () => { if (!document.hidden && currentRoute === "console" && S.me) refreshConsole(); });

    // Where the API is, and whether it wants credentials.
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await fetch("/admin/config.json", { cache: "no-store" });
        if (res.ok) { S.config = { ...S.config, ...(await res.json()) }; break; }
      } catch { /* retried below */ }
      showProblem(new ApiError("unreachable", `Cannot reach the server at ${location.origin}.`));
      await new Promise((r) => setTimeout(r, Math.min(10000, 1000 * 2 ** attempt)));
    }
    serverReachable();
    $("server-version").textContent = S.config.version ? "v" + S.config.version : "";
    await resume();
  }

  // Restore a session: no auth on the server → the local owner; else the refresh cookie.
  async function resume() {
    try {
      if (!S.config.auth_enabled) {
        await loadMe();
        $("sign-out").hidden = true;
        return afterSignIn();
      }
      const outcome = await refreshSession();
      if (outcome === "ok") return afterSignIn();
      if (outcome === "unavailable") {
        setTimeout(resume, 3000);
        return;
      }
      showSignIn("", "");
    } catch (e) {
      if (e.kind === "unreachable" || e.kind === "cors") {
        showProblem(e);
        setTimeout(resume, 3000);
        return;
      }
      showSignIn(panelMessage(e), "bad");
    }
  }

  // While the server is unreachable, keep probing so the banner clears on its own.
  setInterval(async () => {
    if (S.lastProblem !== "unreachable" && S.lastProblem !== "cors") return;
    try {
      const r = await fetch(apiBase() + "/api/health/live", { cache: "no-store", credentials: "omit" });
      if (r.ok) {
        serverReachable();
        if (!S.me) resume();
        else if (currentRoute === "console") refreshConsole();
      }
    } catch { /* still down */ }
  }, 3000);

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
