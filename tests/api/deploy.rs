//! The operations kit in deploy/: the systemd unit passes `systemd-analyze verify`, the alert
//! rules pass `promtool check rules` and their unit tests, the Grafana dashboard's and the
//! alerts' queries are valid PromQL over series the server really exposes, the release
//! installer lays out /opt/aragora/releases/vX.Y.Z + current, and health_check.sh answers
//! as the runbook says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::helpers::{free_port, spawn_app};
use crate::observability::promtool;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a required tool; a missing tool fails when `require_env`=1 (CI), else skips (None).
fn tool(program: &str, args: &[&str], cwd: &Path, require_env: &str) -> Option<(bool, String)> {
    match Command::new(program).args(args).current_dir(cwd).output() {
        Ok(out) => Some((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )),
        Err(e) => {
            assert!(
                std::env::var(require_env).as_deref() != Ok("1"),
                "{program} is required ({require_env}=1) but cannot run: {e}"
            );
            eprintln!("{program} not installed; skipping");
            None
        }
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("deploy/aragora.service")).unwrap();
    for needle in [
        "Type=notify",
        "WatchdogSec=",
        "EnvironmentFile=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=aragora",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/aragora /var/log/aragora",
        "ExecStart=/opt/aragora/current/aragora serve",
        "Environment=ARAGORA_DATA_DIR=/var/lib/aragora/data",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    // `verify` insists that ExecStart's binary exists; on a build machine /opt/aragora is not
    // installed, so verify a copy whose ExecStart points at the freshly built binary.
    let dir = tempfile::tempdir().unwrap();
    let copy = unit.replace(
        "/opt/aragora/current/aragora",
        env!("CARGO_BIN_EXE_aragora"),
    );
    let path = dir.path().join("aragora.service");
    std::fs::write(&path, copy).unwrap();
    if let Some((ok, out)) = tool(
        "systemd-analyze",
        &["verify", path.to_str().unwrap()],
        dir.path(),
        "ARAGORA_REQUIRE_SYSTEMD_ANALYZE",
    ) {
        assert!(
            ok && out.trim().is_empty(),
            "systemd-analyze verify:\n{out}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let require = "ARAGORA_REQUIRE_PROMTOOL";
    if let Some((ok, out)) = tool("promtool", &["check", "rules", "alerts.yml"], &dir, require) {
        assert!(ok, "{out}");
        assert!(out.contains("5 rules found"), "{out}");
    }
    if let Some((ok, out)) = tool(
        "promtool",
        &["test", "rules", "alerts_test.yml"],
        &dir,
        require,
    ) {
        assert!(ok, "{out}");
    }
    if let Some((ok, out)) = tool(
        "promtool",
        &["check", "config", "prometheus.yml"],
        &dir,
        require,
    ) {
        assert!(ok, "{out}");
    }
    let alerts = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    for name in [
        "AragoraDown",
        "HighErrorRate",
        "CircuitBreakerOpen",
        "HighMemoryUsage",
        "RedisDown",
    ] {
        assert!(alerts.contains(&format!("alert: {name}")), "{name}");
    }
}

/// Metric names an expression refers to (ours and the process collector's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !expr.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &expr[i..];
        if (rest.starts_with("aragora_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test]
async fn dashboard_and_alert_queries_use_only_series_the_server_exposes() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/aragora-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().replace("$instance", ".*"))
        .collect();
    assert!(exprs.len() >= 20);
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for needed in [
        "Resident memory",
        "Circuit breaker state",
        "Agent response time p95",
        "Rate limit hits",
    ] {
        assert!(titles.contains(&needed), "{titles:?}");
    }
    let alerts = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    exprs.push(alerts.clone());

    // What a scrape shows, plus the labelled series that appear with their first use.
    let app = spawn_app().await;
    app.get("/api/health").await;
    let text = app.get("/api/metrics").await.text().await.unwrap();
    app.stop().await.unwrap();
    let mut exposed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    for on_first_use in [
        "aragora_rate_limit_hits_total",
        "aragora_agent_response_seconds",
        "aragora_agent_requests_total",
        "aragora_agent_tokens_total",
        "aragora_debate_duration_seconds",
    ] {
        exposed.insert(on_first_use.to_owned());
    }
    for expr in &exprs {
        for name in metric_names(expr) {
            let base = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_count"))
                .or_else(|| name.strip_suffix("_sum"))
                .unwrap_or(&name);
            assert!(
                exposed.contains(base) || exposed.contains(&name),
                "{name} (in {expr}) is not exposed by the server"
            );
        }
    }
    // Valid PromQL: promtool parses them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().take(exprs.len() - 1).enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard_rules.yml"), rules).unwrap();
    if let Some((ok, out)) = tool(
        "promtool",
        &["check", "rules", "dashboard_rules.yml"],
        dir.path(),
        "ARAGORA_REQUIRE_PROMTOOL",
    ) {
        assert!(ok, "{out}");
    }
    let _ = promtool; // the metrics check uses the shared helper
}

#[test]
fn install_script_lays_out_releases_and_current() {
    let prefix = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("deploy/scripts/install.sh"))
        .arg(env!("CARGO_BIN_EXE_aragora"))
        .env("ARAGORA_PREFIX", prefix.path())
        .env("ARAGORA_NO_SYSTEM", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let version = env!("CARGO_PKG_VERSION");
    let release = prefix.path().join(format!("releases/v{version}"));
    assert!(release.join("aragora").is_file(), "{text}");
    assert!(release.join("docs/operations.md").is_file(), "{text}");
    assert!(release.join("deploy/aragora.service").is_file(), "{text}");
    let link = std::fs::read_link(prefix.path().join("current")).unwrap();
    assert_eq!(link, PathBuf::from(format!("releases/v{version}")));
    // The runbook's rollback: point `current` at another release and run what it names.
    let older = prefix.path().join("releases/v0.0.1");
    std::fs::create_dir_all(&older).unwrap();
    std::fs::copy(release.join("aragora"), older.join("aragora")).unwrap();
    let status = Command::new("bash")
        .arg("-c")
        .arg("cd \"$1\" && rm current && ln -s releases/v0.0.1 current && ./current/aragora --version")
        .arg("rollback")
        .arg(prefix.path())
        .output()
        .unwrap();
    assert!(status.status.success());
    assert_eq!(
        String::from_utf8_lossy(&status.stdout).trim(),
        format!("aragora {version}")
    );
}

#[tokio::test]
async fn health_check_script_exit_codes() {
    let script = repo().join("deploy/scripts/health_check.sh");
    let app = spawn_app().await;
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(app.url("/api/health"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.trim(), "OK: All checks passed");
    app.stop().await.unwrap();

    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}/api/health", free_port()))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CRITICAL: Health endpoint unreachable"));
}

/// `emergency_recovery.sh` with `systemctl` stubbed (it records its arguments), against the
/// real Redis holding another tenant's keys and Aragora's, and a real server for the final
/// health check.
#[tokio::test]
async fn emergency_recovery_touches_only_what_aragora_uses() {
    let script = repo().join("deploy/scripts/emergency_recovery.sh");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.path().join("systemctl.calls");
    let stub = bin.join("systemctl");
    std::fs::write(
        &stub,
        format!("#!/bin/sh\necho \"$*\" >> {}\nexit 0\n", calls.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();

    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t{tag}:rl:");
    let channel = format!("t{tag}:events");
    let other = format!("tenant-{tag}:precious");
    let redis_url = crate::helpers::redis_url();
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = [
        other.clone(),
        format!("{prefix}default:ip:1.2.3.4"),
        format!("{prefix}login:ip:5.6.7.8"),
        format!("{channel}:breaker:gpt-4"),
    ];
    for k in &keys {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg("1")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let env_file = dir.path().join("aragora.env");
    std::fs::write(
        &env_file,
        format!(
            "ARAGORA_REDIS_URL={redis_url}\nARAGORA_RATE_LIMIT_PREFIX=\"{prefix}\"\n\
             ARAGORA_EVENT_BUS_CHANNEL={channel}\nARAGORA_LOCK_DIR={}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("aragora_8080.lock"), "123").unwrap();
    let app = spawn_app().await;
    let run = |args: &[&str], health: String| {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(&script)
            .args(args)
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("ARAGORA_ENV_FILE", &env_file)
            .env("ARAGORA_RUN_DIR", dir.path().join("run"))
            .env("ARAGORA_HEALTH_URL", health)
            .env("ARAGORA_RECOVERY_HEALTH_ATTEMPTS", "1")
            .stdin(std::process::Stdio::null());
        cmd.output()
    };
    let exists = |k: String| {
        let client = client.clone();
        async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("EXISTS")
                .arg(&k)
                .query_async::<i64>(&mut c)
                .await
                .unwrap()
                == 1
        }
    };

    // Without --yes and without a terminal: refused, nothing done.
    let out = run(&[], app.url("/api/health")).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!calls.exists());
    // --dry-run: says what it would do, does nothing.
    let out = run(&["--dry-run"], app.url("/api/health")).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("systemctl kill -s KILL aragora"), "{text}");
    assert!(!calls.exists(), "a dry run calls nothing");
    for k in &keys {
        assert!(exists(k.clone()).await, "{k} kept by the dry run");
    }

    let out = run(&["--yes"], app.url("/api/health")).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(exists(other.clone()).await, "another tenant's key survives");
    for k in &keys[1..] {
        assert!(!exists(k.clone()).await, "{k} cleared");
    }
    assert!(!dir.path().join("aragora_8080.lock").exists());
    let recorded = std::fs::read_to_string(&calls).unwrap();
    assert!(recorded.contains("stop aragora"), "{recorded}");
    assert!(
        recorded.contains("kill -s KILL aragora"),
        "only the unit is killed: {recorded}"
    );
    assert!(recorded.contains("start aragora"), "{recorded}");
    assert!(
        !recorded.contains("redis") && !recorded.contains("postgresql"),
        "dependencies that answer are not restarted: {recorded}"
    );
    let dropin = std::fs::read_to_string(
        dir.path()
            .join("run/systemd/system/aragora.service.d/50-emergency-safe-defaults.conf"),
    )
    .unwrap();
    assert!(dropin.contains("EnvironmentFile="), "{dropin}");
    let safe = std::fs::read_to_string(dir.path().join("run/aragora/emergency.env")).unwrap();
    assert!(safe.contains("ARAGORA_MAX_CONCURRENT_DEBATES=3"));

    // A failing final check is a failing exit status.
    let dead = format!("http://127.0.0.1:{}/api/health", free_port());
    let out = run(&["--yes"], dead).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CRITICAL"));
    let out = run(&["--restore", "--yes"], app.url("/api/health"))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!dir.path().join("run/aragora/emergency.env").exists());
    let _: () = redis::cmd("DEL")
        .arg(&other)
        .query_async(&mut conn)
        .await
        .unwrap();
    app.stop().await.unwrap();
}
