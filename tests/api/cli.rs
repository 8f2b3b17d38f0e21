//! The operator's command line through the real binary: `aragora watch` and `aragora health`
//! find the configured ports, refuse a URL they cannot use with exit 2, show their retries,
//! end a debate with its outcome, and stop quietly when their output is closed.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{free_port, http};
use crate::process::{Server, command};

fn wait_child(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

async fn start_debate(server: &Server, body: Value) -> String {
    let r: Value = http()
        .post(server.url("/api/debates"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["debate_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn watch_and_health_use_the_configured_ports_and_end_with_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    server.wait_healthy().await;
    let (api, ws) = (server.api_port.to_string(), server.ws_port.to_string());
    let id = start_debate(
        &server,
        json!({"task": "Cache or not?", "agents": ["demo", "demo", "demo"], "rounds": 1}),
    )
    .await;
    // No --server: the WebSocket port comes from ARAGORA_WS_PORT.
    let out = command(dir.path(), &[("ARAGORA_WS_PORT", ws.as_str())])
        .args(["watch", &id])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("#1 Queued: Cache or not?"), "{stdout}");
    assert!(stdout.contains("Debate ended:"), "{stdout}");
    assert!(
        stdout.contains("Consensus reached:") || stdout.contains("No consensus"),
        "{stdout}"
    );
    assert!(stdout.contains("Final answer:\n  [demo]"), "{stdout}");

    // No --url: the API port comes from ARAGORA_API_PORT; a base URL means its /api/health.
    let out = command(dir.path(), &[("ARAGORA_API_PORT", api.as_str())])
        .arg("health")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = command(dir.path(), &[])
        .args(["health", "--url", &format!("http://127.0.0.1:{api}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: all checks passed"));

    // `aragora watch … | head -2`: the reader goes away; watch ends quietly, no panic.
    let mut child = command(dir.path(), &[])
        .args(["watch", &id, "--server", &format!("ws://127.0.0.1:{ws}/ws")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        lines.next().unwrap().unwrap();
        lines.next().unwrap().unwrap();
    } // stdout closed here
    let status = wait_child(&mut child, Duration::from_secs(20));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success(), "{status:?}: {err}");
    server.signal(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn watch_refuses_a_non_websocket_url_with_exit_2_and_shows_its_retries() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), &[])
        .args(["watch", "abc", "--server", "http://127.0.0.1:8080/ws"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ws:// or wss://"), "{err}");

    // A refused connection: each wait is announced with the attempt count.
    let port = free_port();
    let mut child = command(dir.path(), &[])
        .args([
            "watch",
            "abc",
            "--server",
            &format!("ws://127.0.0.1:{port}/ws"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match lines.next() {
            Some(Ok(line)) => seen.push(line),
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("retrying in") && l.contains("attempt 2 of 25")),
        "{seen:?}"
    );
}

#[test]
fn debate_checks_keys_up_front_and_says_how_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    // One of two seats has no key: refused before anything runs.
    let out = command(dir.path(), &[])
        .args([
            "debate",
            "Tabs or spaces?",
            "--agents",
            "demo,gpt-4",
            "--rounds",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OPENAI_API_KEY is not set"), "{err}");
    assert!(err.contains("only 1 of the 2 seats can run"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());

    // Two seats still can: the keyless one sits out, the debate runs and says how it ended.
    let out = command(dir.path(), &[])
        .args([
            "debate",
            "Tabs or spaces?",
            "--agents",
            "demo,demo,gpt-4",
            "--rounds",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sits out"));
    assert!(stdout.contains("of 3"), "{stdout}");
    assert!(
        stdout.contains("Winner:")
            || stdout.contains("Most votes:")
            || stdout.contains("Consensus reached: false"),
        "{stdout}"
    );
    if stdout.contains("Rounds used: 1 of 3") {
        assert!(stdout.contains("Stopped after round 1:"), "{stdout}");
    }
}

/// `aragora debate` in a terminal (through `script`, which gives it a pseudo-terminal).
fn debate_in_a_terminal(dir: &std::path::Path, no_color: bool) -> String {
    let bin = env!("CARGO_BIN_EXE_aragora");
    let mut cmd = std::process::Command::new("script");
    cmd.args([
        "-qec",
        &format!("{bin} debate 'Tabs or spaces?' --agents demo:400,demo:400 --rounds 1"),
        "/dev/null",
    ])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("TERM", "xterm")
    .env("ARAGORA_DATA_DIR", dir.join("data"))
    .env("ARAGORA_LOCK_DIR", dir);
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let out = cmd.output().expect("script runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debate_shows_progress_and_colour_on_a_terminal_and_plain_lines_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let tty = debate_in_a_terminal(dir.path(), false);
    assert!(tty.contains("agents are thinking (round 1"), "{tty}");
    assert!(
        tty.contains("\u{1b}[36m"),
        "agent messages coloured: {tty:?}"
    );
    let plain_tty = debate_in_a_terminal(dir.path(), true);
    assert!(!plain_tty.contains("\u{1b}[36m"), "NO_COLOR honoured");
    assert!(
        plain_tty.contains("agents are thinking"),
        "the progress line stays"
    );
    // Piped: plain lines, no escape sequences at all.
    let out = command(dir.path(), &[])
        .args([
            "debate",
            "Tabs or spaces?",
            "--agents",
            "demo:400,demo:400",
            "--rounds",
            "1",
        ])
        .output()
        .unwrap();
    let piped = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!piped.contains('\u{1b}'), "{piped:?}");
    assert!(piped.contains("Debate ended:"));
}

#[test]
fn every_command_ends_quietly_when_its_output_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["config"],
        vec!["health", "--url", dead.as_str()],
        vec![
            "debate",
            "Tabs or spaces?",
            "--agents",
            "demo,demo",
            "--rounds",
            "1",
        ],
    ] {
        let mut child = command(dir.path(), &[])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let status = wait_child(&mut child, Duration::from_secs(30));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            status.code().is_some(),
            "{args:?} ended by a signal: {status:?}"
        );
    }
}
