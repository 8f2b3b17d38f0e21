//! WebSocket fan-out against the real `aragora` binary, started as a separate process so
//! its resident memory (`/proc/<pid>/status` VmRSS) is measured alone.
//!
//! Run: `cargo bench --bench ws_fanout` (release build; about 4–6 minutes on 2 cores).
//! Set `WS_BENCH_QUICK=1` for a smoke run with small numbers, and `WS_BENCH_BIN=<path>` to
//! run another build of the server (an A/B against a baseline binary in the same run).
//!
//! 1. Memory per idle connection: server RSS before and after opening N idle connections
//!    (each has received `connection_info`), and after each of them subscribed to one finished
//!    debate and received its whole replay.
//! 2. Fan-out latency: N clients subscribe to one debate *before* it starts (it waits in the
//!    queue behind "blocker" debates that occupy every worker; cancelling one releases it).
//!    Each client records, for every durable event (those with a `seq`), receipt time minus
//!    the event's `timestamp` (set when it was stored), and checks it got every seq
//!    1..=last exactly once and in order. Twice per N: seats answering in 50 ms (a burst
//!    rate, 200 durable events/s), and at agent pace (seats answering in a second).
//! 3. Event-rate steps with 1,000 clients: faster agents, more seats, then several concurrent
//!    debates each watched by every client, until a step drops a slow client (4008).
//!
//! Load generator and server share the machine, so each latency is given three ways: after
//! the client read and parsed the frame (which adds the client's own scheduling behind
//! thousands of other clients on the same cores), at the client's socket (the kernel's
//! receive time of the bytes that completed the frame, read with `SO_TIMESTAMPNS`: what the
//! server's fan-out took), and per event for the first client to get it (the part before
//! the fan-out). Each run also gives the CPU per frame written, of the server and of the
//! clients. Method and recorded numbers: docs/benchmarks.md.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

mod support;
use support::{cpu_seconds_of, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_aragora");
/// Workers in the server, all but the released ones held by never-ending "blocker" debates.
const WORKERS: usize = 8;
/// Wall-clock budget for the event-rate steps (a step already started is finished).
const STEP_BUDGET: Duration = Duration::from_secs(180);
/// Connections being opened at once.
const OPEN_CONCURRENCY: usize = 128;

type Ws = tokio_tungstenite::WebSocketStream<Stamped>;

/// A client's TCP stream that reads with `recvmsg` and keeps the kernel's receive time of
/// the last bytes read (`SO_TIMESTAMPNS`; for TCP, the time the last segment of the read
/// arrived). When tungstenite hands out a frame, the read that completed it was the last
/// one, so this is when the whole frame had reached the client's socket: the server's part
/// of the latency, without the client's own queueing behind other clients.
struct Stamped {
    tcp: TcpStream,
    /// µs since the epoch; 0 until the first stamped read.
    arrival_us: i64,
    cmsg: Vec<u8>,
}

impl Stamped {
    fn new(tcp: TcpStream) -> io::Result<Stamped> {
        setsockopt(&tcp, sockopt::ReceiveTimestampns, &true)?;
        Ok(Stamped {
            tcp,
            arrival_us: 0,
            cmsg: nix::cmsg_space!(TimeSpec),
        })
    }
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            ready!(me.tcp.poll_read_ready(cx))?;
            let fd = me.tcp.as_raw_fd();
            let cmsg = &mut me.cmsg;
            let dst = buf.initialize_unfilled();
            let read = me.tcp.try_io(Interest::READABLE, || {
                let mut iov = [io::IoSliceMut::new(dst)];
                let msg =
                    recvmsg::<()>(fd, &mut iov, Some(cmsg.as_mut_slice()), MsgFlags::empty())?;
                let mut at = None;
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmTimestampns(ts) = c {
                        at = Some(ts.tv_sec() * 1_000_000 + ts.tv_nsec() / 1_000);
                    }
                }
                Ok((msg.bytes, at))
            });
            match read {
                Ok((n, at)) => {
                    buf.advance(n);
                    if let Some(at) = at {
                        me.arrival_us = at;
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------

struct Server {
    child: Child,
    api: SocketAddr,
    ws: SocketAddr,
    http: reqwest::Client,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let (api_port, ws_port) = (free_port(), free_port());
        // stdout/stderr to files: an undrained pipe would block the server.
        let out = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let err = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let bin = std::env::var("WS_BENCH_BIN").unwrap_or_else(|_| BIN.to_owned());
        let child = Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ARAGORA_DATA_DIR", dir.join("data"))
            .env("ARAGORA_LOCK_DIR", dir)
            .env("ARAGORA_LOG_LEVEL", "warn")
            .env("ARAGORA_WS_MAX_CONNECTIONS", "20000")
            .env("ARAGORA_WS_MAX_PER_IP", "20000")
            .env("ARAGORA_RATE_LIMIT_DISABLED", "1")
            .env("ARAGORA_MAX_CONCURRENT_DEBATES", WORKERS.to_string())
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--api-port",
                &api_port.to_string(),
                "--ws-port",
                &ws_port.to_string(),
            ])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("the aragora binary starts");
        aragora::agents::http::install_crypto_provider();
        Server {
            child,
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)),
            ws: SocketAddr::from((Ipv4Addr::LOCALHOST, ws_port)),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(self.url("/api/health")).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited early with {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become healthy");
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    async fn create_debate(&self, agents: &[String], rounds: u32) -> String {
        let body = json!({
            "task": "Should a small team adopt event sourcing for its order service?",
            "agents": agents,
            "rounds": rounds,
            "min_rounds": rounds,
        });
        self.post("/api/debates", body).await["debate_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn status(&self, id: &str) -> String {
        self.get(&format!("/api/debates/{id}")).await["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    async fn wait_status(&self, id: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.status(id).await;
            if done(&s) {
                return;
            }
            assert!(Instant::now() < deadline, "debate {id} stuck in {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every stored event's (seq, timestamp).
    async fn event_times(&self, id: &str) -> Vec<(i64, DateTime<Utc>)> {
        let mut out = Vec::new();
        let mut since = 0;
        loop {
            let page = self
                .get(&format!(
                    "/api/debates/{id}/events?since={since}&limit=1000"
                ))
                .await;
            let events = page["events"].as_array().unwrap();
            for e in events {
                let ts = DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap())
                    .unwrap()
                    .with_timezone(&Utc);
                out.push((e["seq"].as_i64().unwrap(), ts));
            }
            if events.len() < 1000 {
                return out;
            }
            since = out.last().unwrap().0;
        }
    }

    async fn ws_stats(&self) -> Value {
        self.get("/api/ws/stats").await
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps every worker but the released ones busy, so a debate can be created (queued),
/// watched, and then started at a moment of our choosing.
struct Gate {
    blockers: Vec<String>,
}

impl Gate {
    async fn fill(&mut self, server: &Server) {
        while self.blockers.len() < WORKERS {
            // A demo call may wait at most a minute: 20 rounds of them hold the worker far
            // longer than the bench runs.
            let agents = vec!["demo:60000".to_owned(), "demo:60000".to_owned()];
            let id = server.create_debate(&agents, 20).await;
            server.wait_status(&id, |s| s == "running").await;
            self.blockers.push(id);
        }
    }

    /// Cancel `n` blockers: the first `n` queued debates start.
    async fn release(&mut self, server: &Server, n: usize) {
        for _ in 0..n {
            let id = self.blockers.pop().expect("a blocker to release");
            server
                .post(&format!("/api/debates/{id}/cancel"), json!({}))
                .await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// Counters shared by every client task.
#[derive(Default)]
struct Shared {
    connected: AtomicU64,
    subscribed: AtomicU64,
    unsubscribed: AtomicU64,
    /// `debate_end` received (per client and debate).
    ended: AtomicU64,
    durable: AtomicU64,
    ephemeral: AtomicU64,
    closed_slow: AtomicU64,
    closed_other: AtomicU64,
    errors: AtomicU64,
    /// Live deliveries whose read carried no kernel receive time (left out of the socket
    /// latency; reported).
    unstamped: AtomicU64,
    /// Latency is recorded for events stored at or after this (µs since the epoch).
    live_from_us: AtomicI64,
}

/// What one client saw of one debate.
#[derive(Default)]
struct Track {
    last: i64,
    count: u64,
    /// Seqs that were not last + 1 (duplicates, gaps, reordering).
    anomalies: u64,
    lat_us: Vec<u32>,
    /// The same deliveries' latency at the client's socket (kernel receive time), with
    /// their seq.
    sock_lat_us: Vec<(i64, u32)>,
    last_receipt_us: i64,
}

enum Cmd {
    Send(String),
    Take(oneshot::Sender<HashMap<String, Track>>),
}

struct Client {
    cmd: mpsc::UnboundedSender<Cmd>,
}

fn field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let start = s.find(key)? + key.len();
    let rest = &s[start..];
    let end = rest.find(['"', ',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `arrival_us`: when the frame's bytes reached the client's socket (see [`Stamped`]).
fn on_text(text: &str, arrival_us: i64, tracks: &mut HashMap<String, Track>, shared: &Shared) {
    const CONTROL: &[&str] = &[
        "subscribed",
        "unsubscribed",
        "error",
        "connection_info",
        "heartbeat",
        "pong",
    ];
    // Debate events are serialised in struct order: type, debate_id, seq, timestamp, ….
    let kind = text
        .strip_prefix("{\"type\":\"")
        .and_then(|r| r.split('"').next())
        .filter(|k| !CONTROL.contains(k));
    let Some(kind) = kind else {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        match v["type"].as_str().unwrap_or("") {
            "connection_info" => shared.connected.fetch_add(1, Ordering::Relaxed),
            "subscribed" => shared.subscribed.fetch_add(1, Ordering::Relaxed),
            "unsubscribed" => shared.unsubscribed.fetch_add(1, Ordering::Relaxed),
            "error" => {
                if shared.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("client got an error frame: {text}");
                }
                0
            }
            _ => 0,
        };
        return;
    };
    let now = Utc::now().timestamp_micros();
    // Only the envelope, never the payload, is searched.
    let head = &text[..text.find("\"data\":").unwrap_or(text.len())];
    let Some(seq) = field(head, "\"seq\":").and_then(|s| s.parse::<i64>().ok()) else {
        shared.ephemeral.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.durable.fetch_add(1, Ordering::Relaxed);
    let debate = field(head, "\"debate_id\":\"").unwrap_or("");
    let ts = field(head, "\"timestamp\":\"")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(now, |t| t.timestamp_micros());
    let track = match tracks.get_mut(debate) {
        Some(t) => t,
        None => tracks.entry(debate.to_owned()).or_default(),
    };
    if seq != track.last + 1 {
        track.anomalies += 1;
    }
    track.last = track.last.max(seq);
    track.count += 1;
    track.last_receipt_us = now;
    if ts >= shared.live_from_us.load(Ordering::Relaxed) {
        let since = |t: i64| (t - ts).clamp(0, i64::from(u32::MAX)) as u32;
        track.lat_us.push(since(now));
        if arrival_us > 0 {
            track.sock_lat_us.push((seq, since(arrival_us.min(now))));
        } else {
            shared.unstamped.fetch_add(1, Ordering::Relaxed);
        }
    }
    if kind == "debate_end" {
        shared.ended.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run_client(mut ws: Ws, mut cmd: mpsc::UnboundedReceiver<Cmd>, shared: Arc<Shared>) {
    let mut tracks: HashMap<String, Track> = HashMap::new();
    loop {
        tokio::select! {
            c = cmd.recv() => match c {
                Some(Cmd::Send(text)) => {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::Take(reply)) => {
                    let _ = reply.send(std::mem::take(&mut tracks));
                }
                None => break,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    on_text(&t, ws.get_ref().arrival_us, &mut tracks, &shared);
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| f.code);
                    if code == Some(CloseCode::from(4008)) {
                        shared.closed_slow.fetch_add(1, Ordering::Relaxed);
                    } else {
                        shared.closed_other.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    // Still answer Take after the socket ended, so results are never lost.
    while let Some(c) = cmd.recv().await {
        if let Cmd::Take(reply) = c {
            let _ = reply.send(std::mem::take(&mut tracks));
        }
    }
}

async fn connect(server: SocketAddr, source: Ipv4Addr) -> Ws {
    let mut attempt = 0;
    loop {
        let result = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((source, 0)))?;
            let stream = socket.connect(server).await?;
            stream.set_nodelay(true)?;
            let stream = Stamped::new(stream)?;
            // A small read buffer keeps 10,000 clients light (the default is 128 KiB each).
            let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
            tokio_tungstenite::client_async_with_config(
                format!("ws://{server}/ws"),
                stream,
                Some(config),
            )
            .await
            .map(|(ws, _)| ws)
            .map_err(std::io::Error::other)
        }
        .await;
        match result {
            Ok(ws) => return ws,
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("connect failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connect to {server} from {source}: {e}"),
        }
    }
}

/// A set of clients; each set connects from its own loopback address so closed sets'
/// TIME_WAIT ports never run the next set out of ephemeral ports.
struct Clients {
    shared: Arc<Shared>,
    clients: Vec<Client>,
    source: Ipv4Addr,
}

impl Clients {
    fn new(source: Ipv4Addr) -> Clients {
        Clients {
            shared: Arc::new(Shared::default()),
            clients: Vec::new(),
            source,
        }
    }

    fn len(&self) -> usize {
        self.clients.len()
    }

    /// Open connections until there are `n`, each having received connection_info.
    async fn grow(&mut self, server: SocketAddr, n: usize) {
        let need = n.saturating_sub(self.clients.len());
        let source = self.source;
        let shared = self.shared.clone();
        let new: Vec<Client> = futures::stream::iter(0..need)
            .map(|_| {
                let shared = shared.clone();
                async move {
                    let ws = connect(server, source).await;
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(run_client(ws, rx, shared));
                    Client { cmd: tx }
                }
            })
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect()
            .await;
        self.clients.extend(new);
        let want = self.clients.len() as u64;
        wait_for("connection_info", Duration::from_secs(60), || {
            self.shared.connected.load(Ordering::Relaxed) >= want
        })
        .await;
    }

    fn send_all(&self, range: std::ops::Range<usize>, text: &str) {
        for c in &self.clients[range] {
            let _ = c.cmd.send(Cmd::Send(text.to_owned()));
        }
    }

    async fn subscribe(&self, range: std::ops::Range<usize>, debate_id: &str) {
        let before = self.shared.subscribed.load(Ordering::Relaxed);
        let n = range.len() as u64;
        let msg = json!({"type": "subscribe", "debate_id": debate_id, "since": 0}).to_string();
        self.send_all(range, &msg);
        wait_for("subscribed", Duration::from_secs(120), || {
            self.shared.subscribed.load(Ordering::Relaxed) >= before + n
        })
        .await;
    }

    async fn unsubscribe_all(&self, debate_id: &str) {
        let before = self.shared.unsubscribed.load(Ordering::Relaxed);
        let msg = json!({"type": "unsubscribe", "debate_id": debate_id}).to_string();
        self.send_all(0..self.len(), &msg);
        let n = self.len() as u64 - self.shared.closed_slow.load(Ordering::Relaxed);
        wait_for("unsubscribed", Duration::from_secs(60), || {
            self.shared.unsubscribed.load(Ordering::Relaxed) >= before + n
        })
        .await;
    }

    /// Every client's tracks (and resets them).
    async fn take(&self) -> Vec<HashMap<String, Track>> {
        let mut out = Vec::with_capacity(self.len());
        for c in &self.clients {
            let (tx, rx) = oneshot::channel();
            let _ = c.cmd.send(Cmd::Take(tx));
            out.push(rx.await.unwrap_or_default());
        }
        out
    }

    /// Wait until `expected` debate_end deliveries arrived, or delivery stalls.
    async fn wait_ended(&self, expected: u64, stall: Duration) {
        let mut last = (0, Instant::now());
        loop {
            let ended = self.shared.ended.load(Ordering::Relaxed);
            if ended >= expected {
                return;
            }
            let progress = self.shared.durable.load(Ordering::Relaxed)
                + self.shared.ephemeral.load(Ordering::Relaxed);
            if progress != last.0 {
                last = (progress, Instant::now());
            } else if last.1.elapsed() > stall {
                eprintln!("delivery stalled: {ended} of {expected} debate_end received");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Wait until the server counts at most `n` connections (closed sets are gone).
async fn wait_connections(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.ws_stats().await["connections"].as_u64().unwrap_or(0) > n {
        assert!(Instant::now() < deadline, "connections did not close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle().await;
}

async fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

struct MemRow {
    n: usize,
    idle_kib: f64,
    subscribed_kib: f64,
    load: String,
}

async fn measure_memory(server: &Server, finished: &str, sizes: &[usize]) -> Vec<MemRow> {
    let mut clients = Clients::new(Ipv4Addr::new(127, 0, 0, 2));
    settle().await;
    let base = server.rss_kib();
    println!(
        "server RSS before any connection: {:.1} MiB",
        base as f64 / 1024.0
    );
    let mut idle = Vec::new();
    for &n in sizes {
        clients.grow(server.ws, n).await;
        settle().await;
        let rss = server.rss_kib();
        println!(
            "  {n:>6} idle connections: RSS {:.1} MiB (load {})",
            rss as f64 / 1024.0,
            load()
        );
        idle.push((n, rss));
    }
    // Subscribed-idle: the same connections, subscribed to a finished debate in the same
    // steps, each after its whole replay has arrived. The extra RSS per subscription is
    // added to the idle cost at that N.
    let rss_idle_all = server.rss_kib();
    let mut rows = Vec::new();
    let mut done = 0;
    for (i, &n) in sizes.iter().enumerate() {
        clients.subscribe(done..n, finished).await;
        clients.wait_ended(n as u64, Duration::from_secs(30)).await;
        done = n;
        settle().await;
        let rss = server.rss_kib();
        println!(
            "  {n:>6} of them subscribed (replay done): RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
        let idle_kib = (idle[i].1 - base) as f64 / n as f64;
        let per_sub = (rss as f64 - rss_idle_all as f64) / n as f64;
        rows.push(MemRow {
            n,
            idle_kib,
            subscribed_kib: idle_kib + per_sub,
            load: load(),
        });
    }
    drop(clients);
    rows
}

#[derive(Clone)]
struct RunResult {
    clients: usize,
    debates: usize,
    /// Durable events the debates stored after they were released.
    events: usize,
    event_rate: f64,
    frames_rate: f64,
    deliveries: u64,
    delivery_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The same at the client's socket.
    sock_p50_ms: f64,
    sock_p99_ms: f64,
    /// Per event, the first client's socket latency (what came before the fan-out: the
    /// store, the bus, the dispatch); p50 and p99 over events.
    first_p50_ms: f64,
    first_p99_ms: f64,
    /// Live deliveries without a kernel receive time.
    unstamped: u64,
    complete: usize,
    slow_closed: u64,
    slow_dropped_stats: u64,
    load: String,
    duration_s: f64,
    /// CPU per frame written, µs: the server's and this process's (the clients').
    server_us_per_frame: f64,
    clients_us_per_frame: f64,
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    f64::from(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]) / 1000.0
}

/// `debates` debates of `agents` × `rounds`, created queued, watched by every client,
/// then released at once.
async fn fanout_run(
    server: &Server,
    gate: &mut Gate,
    clients: &Clients,
    agents: &[String],
    rounds: u32,
    debates: usize,
) -> RunResult {
    gate.fill(server).await;
    let stats_before = server.ws_stats().await;
    let slow_before = clients.shared.closed_slow.load(Ordering::Relaxed);
    let ended_before = clients.shared.ended.load(Ordering::Relaxed);
    let unstamped_before = clients.shared.unstamped.load(Ordering::Relaxed);
    let mut ids = Vec::new();
    for _ in 0..debates {
        ids.push(server.create_debate(agents, rounds).await);
    }
    let n = clients.len();
    for id in &ids {
        clients.subscribe(0..n, id).await;
    }
    // Let the replay of `debate_queued` reach everyone.
    settle().await;
    let go = Utc::now();
    let (server_cpu, clients_cpu) = (
        cpu_seconds_of(server.child.id()),
        cpu_seconds_of(std::process::id()),
    );
    clients
        .shared
        .live_from_us
        .store(go.timestamp_micros(), Ordering::Relaxed);
    let started = Instant::now();
    gate.release(server, debates).await;
    let alive = n as u64 - clients.shared.closed_slow.load(Ordering::Relaxed);
    clients
        .wait_ended(
            ended_before + alive * debates as u64,
            Duration::from_secs(30),
        )
        .await;
    let duration_s = started.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds_of(server.child.id()) - server_cpu;
    let clients_cpu = cpu_seconds_of(std::process::id()) - clients_cpu;
    for id in &ids {
        server
            .wait_status(id, |s| !matches!(s, "queued" | "running"))
            .await;
    }
    let stats_after = server.ws_stats().await;

    // The debates' own event rate: stored events after release over the span they took.
    let mut last_seq = HashMap::new();
    let (mut first, mut last, mut events) = (i64::MAX, i64::MIN, 0usize);
    for id in &ids {
        let times = server.event_times(id).await;
        last_seq.insert(id.clone(), times.last().map_or(0, |t| t.0));
        for (_, ts) in times.iter().filter(|(_, ts)| *ts >= go) {
            first = first.min(ts.timestamp_micros());
            last = last.max(ts.timestamp_micros());
            events += 1;
        }
    }
    let span_s = ((last - first) as f64 / 1e6).max(1e-3);

    let tracks = clients.take().await;
    let mut lat: Vec<u32> = Vec::new();
    let mut sock_lat: Vec<u32> = Vec::new();
    let mut first_at: HashMap<(&str, i64), u32> = HashMap::new();
    let (mut complete, mut deliveries, mut last_receipt) = (0usize, 0u64, i64::MIN);
    for client in &tracks {
        let mut all = true;
        for id in &ids {
            match client.get(id) {
                Some(t) => {
                    deliveries += t.count;
                    last_receipt = last_receipt.max(t.last_receipt_us);
                    lat.extend_from_slice(&t.lat_us);
                    for &(seq, us) in &t.sock_lat_us {
                        sock_lat.push(us);
                        let first = first_at.entry((id.as_str(), seq)).or_insert(us);
                        *first = (*first).min(us);
                    }
                    all &= t.anomalies == 0
                        && t.count as i64 == last_seq[id]
                        && t.last == last_seq[id];
                }
                None => all = false,
            }
        }
        complete += usize::from(all);
    }
    let mut first_lat: Vec<u32> = first_at.into_values().collect();
    first_lat.sort_unstable();
    drop(tracks);
    lat.sort_unstable();
    sock_lat.sort_unstable();
    let live_deliveries = lat.len() as f64;
    let delivery_span_s = ((last_receipt - first) as f64 / 1e6).max(1e-3);
    let frames = stats_after["messages_sent"].as_u64().unwrap_or(0)
        - stats_before["messages_sent"].as_u64().unwrap_or(0);
    for id in &ids {
        clients.unsubscribe_all(id).await;
    }
    RunResult {
        clients: n,
        debates,
        events,
        event_rate: events as f64 / span_s,
        frames_rate: frames as f64 / delivery_span_s,
        deliveries,
        delivery_rate: live_deliveries / delivery_span_s,
        p50_ms: pct(&lat, 0.50),
        p99_ms: pct(&lat, 0.99),
        max_ms: lat.last().map_or(f64::NAN, |&v| f64::from(v) / 1000.0),
        sock_p50_ms: pct(&sock_lat, 0.50),
        sock_p99_ms: pct(&sock_lat, 0.99),
        first_p50_ms: pct(&first_lat, 0.50),
        first_p99_ms: pct(&first_lat, 0.99),
        unstamped: clients.shared.unstamped.load(Ordering::Relaxed) - unstamped_before,
        complete,
        slow_closed: clients.shared.closed_slow.load(Ordering::Relaxed) - slow_before,
        slow_dropped_stats: stats_after["slow_clients_dropped"].as_u64().unwrap_or(0)
            - stats_before["slow_clients_dropped"].as_u64().unwrap_or(0),
        load: load(),
        duration_s,
        server_us_per_frame: server_cpu * 1e6 / frames.max(1) as f64,
        clients_us_per_frame: clients_cpu * 1e6 / frames.max(1) as f64,
    }
}

fn print_run(label: &str, r: &RunResult) {
    println!(
        "{label:<28} {:>6} {:>3} {:>6} {:>8.0} {:>9.0} {:>9} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>11} {:>5}/{:<5} {:>6.1} {:>7.1} {:>7.1} {}",
        r.clients,
        r.debates,
        r.events,
        r.event_rate,
        r.frames_rate,
        r.deliveries,
        r.delivery_rate,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.sock_p50_ms,
        r.sock_p99_ms,
        r.first_p50_ms,
        r.first_p99_ms,
        format!("{}/{}", r.complete, r.clients),
        r.slow_closed,
        r.slow_dropped_stats,
        r.duration_s,
        r.server_us_per_frame,
        r.clients_us_per_frame,
        r.load,
    );
    if r.unstamped > 0 {
        println!(
            "  ({} live deliveries carried no kernel receive time and are not in sock p50/p99)",
            r.unstamped
        );
    }
}

fn run_header() {
    println!(
        "{:<28} {:>6} {:>3} {:>6} {:>8} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>11} {:>11} {:>6} {:>7} {:>7} load",
        "run",
        "subs",
        "deb",
        "events",
        "ev/s",
        "frames/s",
        "delivered",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "sock p50",
        "sock p99",
        "1st p50",
        "1st p99",
        "complete",
        "4008/stats",
        "secs",
        "srv µs",
        "cli µs"
    );
}

/// One debate's fan-out to `clients` at each pace (label, seats, rounds), printed as it ends.
async fn fanout_at_paces<const N: usize>(
    server: &Server,
    gate: &mut Gate,
    clients: &Clients,
    paces: &[(&str, &Vec<String>, u32); N],
) -> [RunResult; N] {
    let mut runs = Vec::with_capacity(N);
    for (label, agents, rounds) in paces {
        let r = fanout_run(server, gate, clients, agents, *rounds, 1).await;
        print_run(&format!("{label} {}", r.clients), &r);
        runs.push(r);
    }
    runs.try_into()
        .unwrap_or_else(|_| unreachable!("one run per pace"))
}

/// Seats, rounds and concurrent debates of one event-rate step.
type Step = (Vec<String>, u32, usize);

fn seats(model: &str, n: usize) -> Vec<String> {
    vec![model.to_owned(); n]
}

#[tokio::main]
async fn main() {
    let quick = std::env::var("WS_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let (big, small) = if quick { (1_000, 100) } else { (10_000, 1_000) };
    assert!(
        hard >= big as u64 + 500,
        "RLIMIT_NOFILE hard limit {hard} is too low for {big} connections"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    server.wait_healthy().await;
    println!(
        "aragora ws_fanout bench: server pid {}, load {} at start, fd limit {hard}",
        server.child.id(),
        load()
    );

    // A finished debate for the subscribed-idle variant, and a warm-up connection.
    let finished = server.create_debate(&seats("demo", 2), 1).await;
    server
        .wait_status(&finished, |s| !matches!(s, "queued" | "running"))
        .await;
    let replay_len = server.event_times(&finished).await.len();
    let mut gate = Gate {
        blockers: Vec::new(),
    };
    gate.fill(&server).await;
    {
        let mut warm = Clients::new(Ipv4Addr::new(127, 0, 0, 5));
        warm.grow(server.ws, 1).await;
        warm.subscribe(0..1, &finished).await;
        warm.wait_ended(1, Duration::from_secs(10)).await;
    }

    // 1. Memory.
    println!(
        "\n== 1. memory per connection ({replay_len}-event finished debate for the subscribed variant)"
    );
    let mem = measure_memory(&server, &finished, &[small, big]).await;
    wait_connections(&server, 0).await;

    // 2. Fan-out latency, then 3. rate steps on the small set.
    println!("\n== 2. fan-out latency");
    let fanout_agents = seats("demo:50", 6);
    let fanout_rounds = 5;
    // The same fan-out at the pace of model calls: seats answering in a second (the 1-s
    // agents of the concurrent-debates goal) instead of 50 ms, so each event's fan-out is
    // measured on its own rather than queued behind the previous burst's.
    let paced_agents = seats("demo:1000", 6);
    let paced_rounds = 2;
    let paces = [
        ("fan-out", &fanout_agents, fanout_rounds),
        ("agent pace", &paced_agents, paced_rounds),
    ];
    let mut fanout = Vec::new();
    let mut paced = Vec::new();
    let mut small_set = Clients::new(Ipv4Addr::new(127, 0, 0, 3));
    small_set.grow(server.ws, small).await;
    let [fast, slow] = fanout_at_paces(&server, &mut gate, &small_set, &paces).await;
    fanout.push(fast);
    paced.push(slow);

    println!("\n== 3. event-rate steps with {small} subscribers");
    // (label, seats, rounds, concurrent debates); `None` reuses the fan-out run above.
    let steps: Vec<(String, Option<Step>)> = vec![
        (
            "6 × demo:200, 3 rounds".into(),
            Some((seats("demo:200", 6), 3, 1)),
        ),
        ("6 × demo:50, 5 rounds".into(), None),
        (
            "10 × demo:10, 3 rounds".into(),
            Some((seats("demo:10", 10), 3, 1)),
        ),
        (
            "10 × demo, 3 rounds".into(),
            Some((seats("demo", 10), 3, 1)),
        ),
        (
            "10 × demo, 3 rounds, 4 deb.".into(),
            Some((seats("demo", 10), 3, 4)),
        ),
        (
            "10 × demo, 3 rounds, 8 deb.".into(),
            Some((seats("demo", 10), 3, 8)),
        ),
    ];
    let steps_started = Instant::now();
    let mut rate_rows = Vec::new();
    for (label, step) in steps {
        if steps_started.elapsed() > STEP_BUDGET {
            println!("(remaining steps skipped: the step budget of {STEP_BUDGET:?} is spent)");
            break;
        }
        let r = match step {
            Some((agents, rounds, debates)) => {
                fanout_run(&server, &mut gate, &small_set, &agents, rounds, debates).await
            }
            None => fanout[0].clone(),
        };
        print_run(&label, &r);
        let dropped = r.slow_closed > 0 || r.slow_dropped_stats > 0;
        rate_rows.push((label, r));
        if dropped {
            break;
        }
    }
    drop(small_set);
    wait_connections(&server, 0).await;

    let mut big_set = Clients::new(Ipv4Addr::new(127, 0, 0, 4));
    big_set.grow(server.ws, big).await;
    let [fast, slow] = fanout_at_paces(&server, &mut gate, &big_set, &paces).await;
    fanout.push(fast);
    paced.push(slow);
    drop(big_set);

    // Summary.
    println!("\n==================== summary ====================");
    println!("1. memory per connection (server RSS delta / N)");
    println!(
        "{:>8} {:>14} {:>20}  load",
        "N", "idle KiB", "subscribed-idle KiB"
    );
    for m in &mem {
        println!(
            "{:>8} {:>14.2} {:>20.2}  {}",
            m.n, m.idle_kib, m.subscribed_kib, m.load
        );
    }
    println!(
        "\n2. fan-out: one debate ({} × demo:50 seats, {fanout_rounds} rounds), subscribed before it starts",
        fanout_agents.len()
    );
    println!(
        "   latency = receipt − event timestamp, over every live durable delivery; frames/s counts token deltas too"
    );
    println!(
        "   p50/p99/max: after the client parsed the frame; sock p50/p99: when the frame reached the client's socket (kernel receive time); 1st p50/p99: per event, the first client to get it (the part before the fan-out)"
    );
    println!(
        "   srv µs / cli µs: CPU per frame written, of the server and of this process's clients, from release to the last client's debate_end (10-ms ticks)"
    );
    run_header();
    for r in &fanout {
        print_run(&format!("fan-out {}", r.clients), r);
    }
    println!(
        "\n2b. the same at agent pace: one debate ({} × demo:1000 seats, {paced_rounds} rounds)",
        paced_agents.len()
    );
    run_header();
    for r in &paced {
        print_run(&format!("agent pace {}", r.clients), r);
    }
    println!("\n3. event-rate steps, {small} subscribers watching every debate");
    run_header();
    for (label, r) in &rate_rows {
        print_run(label, r);
    }
    // The ladder goes up in offered load; the answer is the last step before any drop.
    let held = rate_rows
        .iter()
        .take_while(|(_, r)| r.slow_closed == 0 && r.slow_dropped_stats == 0)
        .last();
    match held {
        Some((label, r)) => println!(
            "highest step without a dropped client: {label}: produced {:.0} durable events/s ({:.0} frames/s per client), p99 {:.1} ms",
            r.event_rate,
            r.frames_rate / r.clients as f64,
            r.p99_ms
        ),
        None => println!("the first step already dropped clients"),
    }
    if let Some((label, r)) = rate_rows
        .iter()
        .max_by(|a, b| a.1.event_rate.total_cmp(&b.1.event_rate))
    {
        println!(
            "highest produced event rate: {label}: {:.0} durable events/s",
            r.event_rate
        );
    }
    let stats = server.ws_stats().await;
    println!(
        "server: peak connections {}, slow clients dropped {}, errors {}, final RSS {:.1} MiB, load {}",
        stats["connections_peak"],
        stats["slow_clients_dropped"],
        stats["errors"],
        server.rss_kib() as f64 / 1024.0,
        load()
    );
    drop(server);
}
