//! The Prometheus process collector, read from `/proc` at every scrape:
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`. Elsewhere than Linux the
//! values are absent (the gauges stay 0).

use std::fs;

/// One reading of this process's resource usage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// User + system CPU time.
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Unix time the process started.
    pub start_time_seconds: f64,
}

/// Kernel clock ticks per second for /proc/*/stat times. Linux has reported USER_HZ = 100 to
/// user space on every architecture for decades (sysconf(_SC_CLK_TCK)).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Resident set size of this process in bytes, from `VmRSS` in /proc (0 where /proc is
/// unavailable).
pub fn resident_memory_bytes() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Read this process's statistics. Missing pieces are 0.
pub fn read() -> ProcessStats {
    let mut stats = ProcessStats::default();
    let page_size = 4096_u64;
    if let Ok(stat) = fs::read_to_string("/proc/self/stat")
        && let Some(fields) = stat_fields(&stat)
    {
        // Fields after the command, numbered as in proc(5) minus 3 (state is index 0).
        let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let utime = num(11).unwrap_or(0);
        let stime = num(12).unwrap_or(0);
        stats.cpu_seconds = (utime + stime) as f64 / CLOCK_TICKS_PER_SECOND;
        let starttime_ticks = num(19).unwrap_or(0);
        stats.virtual_memory_bytes = num(20).unwrap_or(0);
        stats.resident_memory_bytes = num(21).unwrap_or(0) * page_size;
        if let Some(boot) = boot_time_seconds() {
            stats.start_time_seconds = boot + starttime_ticks as f64 / CLOCK_TICKS_PER_SECOND;
        }
    }
    // VmRSS is exact even where the page size is not 4 KiB.
    let rss = resident_memory_bytes();
    if rss > 0 {
        stats.resident_memory_bytes = rss;
    }
    stats.open_fds = fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    stats.max_fds = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    stats
}

/// The space-separated fields after `pid (comm)`; comm may itself contain spaces and parens.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

/// `btime` from /proc/stat: when the machine booted, in Unix seconds.
fn boot_time_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// The process metrics in Prometheus text format, appended to the recorder's output at every
/// scrape. Written here rather than through the `metrics` facade because its counters are
/// integers and CPU seconds are not.
pub fn render() -> String {
    let stats = read();
    let mut out = String::with_capacity(1024);
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stats.cpu_seconds,
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        stats.open_fds as f64,
    );
    metric(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        stats.max_fds as f64,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stats.virtual_memory_bytes as f64,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stats.resident_memory_bytes as f64,
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        stats.start_time_seconds,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_values_for_this_process() {
        let before = read();
        assert!(before.resident_memory_bytes > 1024 * 1024, "{before:?}");
        assert!(before.virtual_memory_bytes >= before.resident_memory_bytes);
        assert!(before.open_fds >= 3, "{before:?}");
        assert!(before.max_fds >= before.open_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            before.start_time_seconds > now - 3600.0 && before.start_time_seconds <= now + 1.0,
            "start {} now {now}",
            before.start_time_seconds
        );
        // Burn some CPU; the reading must grow.
        let mut x = 0_u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = read();
        assert!(
            after.cpu_seconds > before.cpu_seconds,
            "{before:?} {after:?}"
        );
        // Opening a file shows up in the fd count.
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(read().open_fds > after.open_fds - 1);
        drop(f);
    }

    #[test]
    fn render_has_help_type_and_a_value_per_metric() {
        let text = render();
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{text}");
            let value: f64 = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in {text}"));
            assert!(
                value > 0.0 || name == "process_cpu_seconds_total",
                "{name}={value}"
            );
        }
    }

    #[test]
    fn comm_with_spaces_and_parens_is_skipped() {
        let f = stat_fields("42 (my (odd) name) S 1 2 3").unwrap();
        assert_eq!(f, ["S", "1", "2", "3"]);
    }
}
