//! Test support for the provider adapters: a fake HTTP/1.1 server on 127.0.0.1 that records
//! requests and answers with scripted replies (whole bodies, chunked bodies flushed chunk by
//! chunk, or never). Compiled only for tests (`agents::http::testing`).

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{ClientOptions, ProviderClient};
use crate::agents::{AgentError, DeltaSink};

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole body with Content-Length.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// `Transfer-Encoding: chunked`, one HTTP chunk per element, each flushed separately
    /// with a short pause so the client sees them as separate reads.
    Chunked {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<Vec<u8>>,
    },
    /// Like `Chunked`, but after the chunks the body never ends (the connection stays open).
    Stall {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<Vec<u8>>,
    },
    /// Read the request, then never answer (the connection stays open).
    Hang,
}

pub fn json_reply(status: u16, body: &Value) -> Reply {
    Reply::Full {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::to_vec(body).unwrap(),
    }
}

pub fn json_reply_with(status: u16, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type".to_owned(), "application/json".to_owned())];
    all.extend(
        headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    );
    Reply::Full {
        status,
        headers: all,
        body: serde_json::to_vec(body).unwrap(),
    }
}

/// An SSE body cut into `chunk`-byte pieces (small sizes split lines and UTF-8 characters).
pub fn sse_reply(body: &str, chunk: usize) -> Reply {
    Reply::Chunked {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: body.as_bytes().chunks(chunk).map(<[u8]>::to_vec).collect(),
    }
}

type Responder = dyn Fn(&RecordedRequest) -> Reply + Send + Sync;

pub struct FakeServer {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    /// Every request gets `reply`.
    pub async fn start(reply: Reply) -> FakeServer {
        FakeServer::with(move |_| reply.clone()).await
    }

    pub async fn with(
        responder: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let responder: Arc<Responder> = Arc::new(responder);
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts the connections.
            let mut connections = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    break;
                };
                let responder = responder.clone();
                let recorded = recorded.clone();
                connections.spawn(async move {
                    let _ = serve(socket, responder, recorded).await;
                });
            }
        });
        FakeServer {
            base,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().clone()
    }

    pub fn only_request(&self) -> RecordedRequest {
        let requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "expected exactly one request: {requests:?}"
        );
        requests.into_iter().next().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    responder: Arc<Responder>,
    recorded: Arc<Mutex<Vec<RecordedRequest>>>,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let request = RecordedRequest {
        method,
        target,
        headers,
        body,
    };
    recorded.lock().push(request.clone());
    match responder(&request) {
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut out = status_head(status, &headers);
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            socket.write_all(&out).await?;
        }
        Reply::Chunked {
            status,
            headers,
            chunks,
        } => {
            write_chunks(&mut socket, status, &headers, &chunks).await?;
            socket.write_all(b"0\r\n\r\n").await?;
        }
        Reply::Stall {
            status,
            headers,
            chunks,
        } => {
            write_chunks(&mut socket, status, &headers, &chunks).await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    socket.flush().await?;
    socket.shutdown().await
}

async fn write_chunks(
    socket: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    chunks: &[Vec<u8>],
) -> std::io::Result<()> {
    let mut out = status_head(status, headers);
    out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    socket.write_all(&out).await?;
    socket.flush().await?;
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        socket.write_all(&frame).await?;
        socket.flush().await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn status_head(status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Fake\r\nconnection: close\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out
}

/// A client that times out after `timeout` of silence (for the hang tests).
pub fn client_with_read_timeout(timeout: Duration) -> ProviderClient {
    ProviderClient::new(ClientOptions {
        read_timeout: Some(timeout),
        ..ClientOptions::default()
    })
    .unwrap()
}

/// A sink big enough that no delta is dropped, and its receiver.
pub fn sink() -> (DeltaSink, tokio::sync::mpsc::Receiver<String>) {
    DeltaSink::new(100_000)
}

/// Everything the sink received so far (the call has returned, so that is everything).
pub fn drain(rx: &mut tokio::sync::mpsc::Receiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(delta) = rx.try_recv() {
        out.push(delta);
    }
    out
}

/// Text with multi-byte characters so small chunks split UTF-8 sequences.
pub const UNICODE_PIECES: [&str; 6] = ["Héllo", ", wörld", " 🌍", " — ", "naïve café", " ✓"];

/// Assert the common "bad key" contract: Auth, not retryable, key not in the Display.
pub fn assert_auth_without_key(err: &AgentError, key: &str) {
    assert!(matches!(err, AgentError::Auth { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains(key), "key leaked: {err}");
    assert!(!format!("{err:?}").contains(key), "key leaked: {err:?}");
}

/// Like [`sse_reply`] for a body that need not be UTF-8.
pub fn sse_bytes_reply(body: &[u8], chunk: usize) -> Reply {
    Reply::Chunked {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: body.chunks(chunk).map(<[u8]>::to_vec).collect(),
    }
}
