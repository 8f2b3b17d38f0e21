//! Allocation profiling with jemalloc's heap profiler (ARAGORA_MEMORY_PROFILING=1) and the
//! allocator controls behind `POST /api/admin/cleanup-caches`.
//!
//! jemalloc reads its options once, at process start, from `MALLOC_CONF` (`_RJEM_MALLOC_CONF`
//! for the prefixed build). So when profiling is requested and the process was not started with
//! it, `aragora serve` re-executes itself (same pid, same arguments) with
//! `prof:true,prof_active:true,lg_prof_sample:16` added — see [`reexec_with_profiling`]. A
//! dump then asks jemalloc for a heap profile (`prof.dump`), parses it (the `heap_v2` text
//! format), symbolises the stack of every sampled allocation in-process and aggregates by
//! allocation site. Bytes and counts are jemalloc's unbiased estimates of the live heap
//! from its samples (one sample per 2^lg_prof_sample bytes allocated, on average).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;
use tikv_jemalloc_ctl::{Access, AsName};

/// Sampling interval (log2 bytes) used when profiling is turned on: 64 KiB on average.
pub const LG_PROF_SAMPLE: u32 = 16;
/// The jemalloc options that turn the profiler on.
pub const PROFILING_CONF: &str = "prof:true,prof_active:true,lg_prof_sample:16";
/// Set in the re-executed process so it never re-executes twice.
const REEXEC_MARKER: &str = "ARAGORA_PROFILING_REEXEC";
/// Where the runbook reads the dump.
pub const DUMP_PATH: &str = "/tmp/aragora_memory_dump.json";

/// Is jemalloc the allocator of this process with its profiler compiled in and enabled?
pub fn profiler_enabled() -> bool {
    tikv_jemalloc_ctl::profiling::prof::read().unwrap_or(false)
}

/// Is the profiler currently sampling?
pub fn profiler_active() -> bool {
    b"prof.active\0".name().read().unwrap_or(false)
}

/// Why profiling could not be switched on, or a dump taken.
#[derive(Debug, thiserror::Error)]
pub enum ProfilingError {
    #[error("cannot set prof.active: {0}")]
    SetActive(tikv_jemalloc_ctl::Error),
    #[error("ARAGORA_MEMORY_PROFILING=1 but jemalloc's profiler is not available in this build")]
    NotInBuild,
    #[error("jemalloc's heap profiler is not enabled in this process")]
    NotEnabled,
    #[error("cannot find own executable: {0}")]
    Executable(#[source] std::io::Error),
    #[error("cannot re-execute with the heap profiler on: {0}")]
    Reexec(#[source] std::io::Error),
    #[error("prof.dump failed: {0}")]
    Dump(tikv_jemalloc_ctl::Error),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a jemalloc heap_v2 profile")]
    NotAProfile,
    #[error("{0}")]
    Serialize(#[source] serde_json::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Turn sampling on or off (only meaningful when [`profiler_enabled`]).
pub fn set_active(active: bool) -> Result<(), ProfilingError> {
    b"prof.active\0"
        .name()
        .write(active)
        .map_err(ProfilingError::SetActive)
}

/// Called before the runtime starts. With `wanted` and a process started without the
/// profiler, replace this process with itself started with [`PROFILING_CONF`]; returns only
/// if that is not needed or not possible (the error says why). Without `wanted`, makes sure
/// a profiler enabled from the environment is not sampling.
pub fn reexec_with_profiling(wanted: bool) -> Result<(), ProfilingError> {
    if !wanted {
        if profiler_enabled() {
            let _ = set_active(false);
        }
        return Ok(());
    }
    if profiler_enabled() {
        return set_active(true);
    }
    if std::env::var_os(REEXEC_MARKER).is_some() {
        return Err(ProfilingError::NotInBuild);
    }
    let exe = std::env::current_exe().map_err(ProfilingError::Executable)?;
    let conf = |name: &str| match std::env::var(name) {
        Ok(existing) if !existing.is_empty() => format!("{existing},{PROFILING_CONF}"),
        _ => PROFILING_CONF.to_owned(),
    };
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_CONF", conf("MALLOC_CONF"))
        .env("_RJEM_MALLOC_CONF", conf("_RJEM_MALLOC_CONF"))
        .env(REEXEC_MARKER, "1")
        .exec();
    Err(ProfilingError::Reexec(err))
}

/// One allocation site in a dump.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Allocation {
    /// Estimated live bytes allocated from this site.
    pub bytes: u64,
    /// Estimated live allocations from this site.
    pub count: u64,
    /// The first frame outside the allocator: `function (file:line)`.
    pub site: String,
    /// The symbolised stack, innermost first (allocator frames removed), at most 12 frames.
    pub frames: Vec<String>,
}

/// The document written to [`DUMP_PATH`].
#[derive(Debug, Clone, Serialize)]
pub struct MemoryDump {
    pub generated_at: String,
    pub pid: u32,
    pub resident_memory_bytes: u64,
    /// jemalloc `stats.allocated` when the profile was taken: bytes the application holds.
    pub allocated_bytes: u64,
    /// jemalloc `stats.resident`.
    pub allocator_resident_bytes: u64,
    /// Sum of `bytes` over all sites (the profiler's estimate of the live heap).
    pub sampled_live_bytes: u64,
    pub lg_prof_sample: u32,
    pub sites: usize,
    /// Largest sites first.
    pub top_allocations: Vec<Allocation>,
    /// The raw jemalloc profile (readable with `jeprof`).
    pub raw_profile: String,
}

/// Allocator statistics (refreshed by advancing jemalloc's epoch).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AllocatorStats {
    pub allocated: u64,
    pub active: u64,
    pub resident: u64,
    pub retained: u64,
}

pub fn allocator_stats() -> AllocatorStats {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    AllocatorStats {
        allocated: tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0) as u64,
        active: tikv_jemalloc_ctl::stats::active::read().unwrap_or(0) as u64,
        resident: tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0) as u64,
        retained: tikv_jemalloc_ctl::stats::retained::read().unwrap_or(0) as u64,
    }
}

/// Return the dirty and muzzy pages of every arena to the OS now instead of after their decay
/// time. Returns the arenas purged.
///
/// jemalloc's direct `arena.<i>.purge` control takes null pointers, which only unsafe code can
/// pass, so this uses safe controls: each arena's decay times are set to 0, then this thread
/// moves into the arena (`thread.arena`) and churns one large block until jemalloc's decay
/// ticker runs (every 1000 large allocations), which with a decay time of 0 purges everything;
/// then the thread's arena and the decay times are restored.
pub fn purge_arenas() -> u32 {
    const TICKS: usize = 1100;
    let narenas: u32 = b"arenas.narenas\0".name().read().unwrap_or(0);
    let home: Option<u32> = b"thread.arena\0".name().read().ok();
    let mut purged = 0;
    for arena in 0..narenas {
        let dirty_key = format!("arena.{arena}.dirty_decay_ms\0");
        let muzzy_key = format!("arena.{arena}.muzzy_decay_ms\0");
        let dirty = dirty_key.as_bytes().name();
        let muzzy = muzzy_key.as_bytes().name();
        // Unused arena indexes answer with an error; skip them.
        let Ok(previous_dirty) = Access::<isize>::update(dirty, 0) else {
            continue;
        };
        let previous_muzzy = Access::<isize>::update(muzzy, 0).ok();
        if b"thread.arena\0".name().write(arena).is_ok() {
            for _ in 0..TICKS {
                // Above the thread cache's size limit, so every allocation ticks the arena.
                std::hint::black_box(vec![0u8; 64 * 1024]);
            }
            purged += 1;
        }
        let _ = Access::<isize>::write(dirty, previous_dirty);
        if let Some(previous) = previous_muzzy {
            let _ = Access::<isize>::write(muzzy, previous);
        }
    }
    if let Some(home) = home {
        let _ = b"thread.arena\0".name().write(home);
    }
    purged
}

/// The path jemalloc writes its profile to (a `'static` C string, as `prof.dump` wants).
fn raw_profile_path() -> &'static [u8] {
    static PATH: OnceLock<&'static [u8]> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("aragora_heap.{}.prof", std::process::id()));
        let mut bytes = path.display().to_string().into_bytes();
        bytes.push(0);
        Box::leak(bytes.into_boxed_slice())
    })
}

/// Take a heap profile and write the dump to `out`. Slow (symbolisation): run it on a
/// blocking thread.
pub fn dump(out: &Path, top: usize) -> Result<MemoryDump, ProfilingError> {
    if !profiler_enabled() {
        return Err(ProfilingError::NotEnabled);
    }
    let raw_path = raw_profile_path();
    tikv_jemalloc_ctl::raw::write_str(b"prof.dump\0", raw_path).map_err(ProfilingError::Dump)?;
    let raw_path =
        PathBuf::from(std::str::from_utf8(&raw_path[..raw_path.len() - 1]).expect("path is UTF-8"));
    let text = std::fs::read_to_string(&raw_path).map_err(|source| ProfilingError::Read {
        path: raw_path.clone(),
        source,
    })?;
    // Before symbolising: resolving frames loads debug info, which allocates a lot.
    let stats = allocator_stats();
    let resident_memory_bytes = crate::telemetry::resident_memory_bytes();
    let samples = parse_heap_profile(&text)?;
    let mut sites = aggregate(&samples, &mut Symbolizer::default());
    let sampled_live_bytes = sites.iter().map(|s| s.bytes).sum();
    let site_count = sites.len();
    sites.truncate(top);
    let dump = MemoryDump {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        pid: std::process::id(),
        resident_memory_bytes,
        allocated_bytes: stats.allocated,
        allocator_resident_bytes: stats.resident,
        sampled_live_bytes,
        lg_prof_sample: tikv_jemalloc_ctl::profiling::lg_prof_sample::read()
            .map_or(LG_PROF_SAMPLE, |v| v as u32),
        sites: site_count,
        top_allocations: sites,
        raw_profile: raw_path.display().to_string(),
    };
    let json = serde_json::to_vec_pretty(&dump).map_err(ProfilingError::Serialize)?;
    std::fs::write(out, json).map_err(|source| ProfilingError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(dump)
}

/// One stack from a heap profile with its live object count and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub addresses: Vec<u64>,
    pub count: u64,
    pub bytes: u64,
}

/// Parse jemalloc's `heap_v2` profile: `@ 0x… 0x…` stack lines, each followed by
/// `  t*: <objects>: <bytes> [<cum objects>: <cum bytes>]`.
pub fn parse_heap_profile(text: &str) -> Result<Vec<Sample>, ProfilingError> {
    if !text.starts_with("heap_v2/") {
        return Err(ProfilingError::NotAProfile);
    }
    let mut samples = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(stack) = line.strip_prefix("@ ") else {
            if line.starts_with("MAPPED_LIBRARIES") {
                break;
            }
            continue;
        };
        let addresses: Vec<u64> = stack
            .split_whitespace()
            .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .collect();
        // The per-stack total is the `t*:` line right after it.
        while let Some(next) = lines.peek() {
            let trimmed = next.trim_start();
            if let Some(rest) = trimmed.strip_prefix("t*:") {
                let mut nums = rest
                    .split(|c: char| c == ':' || c == '[' || c.is_whitespace())
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse::<u64>().unwrap_or(0));
                let count = nums.next().unwrap_or(0);
                let bytes = nums.next().unwrap_or(0);
                if bytes > 0 {
                    samples.push(Sample {
                        addresses: addresses.clone(),
                        count,
                        bytes,
                    });
                }
                lines.next();
                break;
            } else if trimmed.starts_with('t') {
                lines.next();
            } else {
                break;
            }
        }
    }
    Ok(samples)
}

/// Resolves return addresses to `function (file:line)` frames, caching per address. One
/// address may stand for several frames when calls were inlined (innermost first).
#[derive(Default)]
pub struct Symbolizer {
    cache: HashMap<u64, Vec<String>>,
}

impl Symbolizer {
    pub fn frames(&mut self, address: u64) -> Vec<String> {
        self.cache
            .entry(address)
            .or_insert_with(|| {
                // A return address points after the call; step back into it.
                let ip = address.saturating_sub(1) as usize as *mut std::ffi::c_void;
                let mut out = Vec::new();
                backtrace::resolve(ip, |symbol| {
                    let Some(name) = symbol.name().map(|n| format!("{n:#}")) else {
                        return;
                    };
                    let location = match (symbol.filename(), symbol.lineno()) {
                        (Some(file), Some(line)) => format!(" ({}:{line})", short_path(file)),
                        _ => String::new(),
                    };
                    out.push(format!("{name}{location}"));
                });
                if out.is_empty() {
                    out.push(format!("{address:#x}"));
                }
                out
            })
            .clone()
    }
}

fn short_path(path: &Path) -> String {
    let text = path.display().to_string();
    // Keep the part from `src/` (or the crate directory) on: enough to find the line.
    for marker in ["/registry/src/", "/rustc/"] {
        if let Some(at) = text.find(marker) {
            return text[at + marker.len()..]
                .split_once('/')
                .map_or(text.clone(), |(_, rest)| rest.to_owned());
        }
    }
    text.rfind("/src/")
        .map_or(text.clone(), |at| text[at + 1..].to_owned())
}

/// Frames that belong to the allocator or the standard library's allocation plumbing; the
/// allocation site is the first frame that is none of these.
fn is_allocator_frame(frame: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "_rjem_",
        "je_",
        "prof_",
        "imalloc",
        "irallocx",
        "do_rallocx",
        "rallocx",
        "mallocx",
        "ialloc",
        "malloc",
        "calloc",
        "realloc",
        "posix_memalign",
        "aligned_alloc",
        "__rust_alloc",
        "__rust_realloc",
        "__rust_alloc_zeroed",
        "__rustc::",
        "__rdl_",
        "__rg_",
        "tikv_jemallocator",
        "<tikv_jemallocator",
        "alloc::alloc::",
        "alloc::raw_vec::",
        "<alloc::raw_vec::",
        "alloc::vec::Vec<T,A>::reserve",
        "alloc::vec::Vec<T,A>::with_capacity",
        "alloc::boxed::Box<T>::new",
        "alloc::sync::Arc<T>::new",
        "std::alloc::",
        "core::alloc::",
        "<std::alloc::",
        "hashbrown::raw::",
    ];
    // SQLite's own allocator wrappers (sqlite3Malloc, sqlite3DbMallocRawNN, dbMallocRawFinish…).
    let sqlite_alloc = (frame.starts_with("sqlite3") || frame.starts_with("dbMalloc"))
        && (frame.contains("Malloc") || frame.contains("Realloc"));
    // Inlined standard-library code (RawVec::with_capacity_in, Vec::from_iter, Box::new…).
    let std_inline = frame.contains(" (library/");
    sqlite_alloc || std_inline || PREFIXES.iter().any(|p| frame.starts_with(p))
}

/// Symbolise and merge samples by allocation site, largest first.
pub fn aggregate(samples: &[Sample], symbols: &mut Symbolizer) -> Vec<Allocation> {
    let mut by_site: HashMap<String, Allocation> = HashMap::new();
    for sample in samples {
        let mut frames: Vec<String> = sample
            .addresses
            .iter()
            .flat_map(|&a| symbols.frames(a))
            .collect();
        let first = frames
            .iter()
            .position(|f| !is_allocator_frame(f))
            .unwrap_or(0);
        frames.drain(..first);
        frames.truncate(12);
        let site = frames
            .first()
            .cloned()
            .unwrap_or_else(|| "<unknown>".into());
        let entry = by_site.entry(site.clone()).or_insert_with(|| Allocation {
            bytes: 0,
            count: 0,
            site,
            frames: frames.clone(),
        });
        entry.bytes += sample.bytes;
        entry.count += sample.count;
    }
    let mut sites: Vec<Allocation> = by_site.into_values().collect();
    sites.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.site.cmp(&b.site)));
    sites
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "heap_v2/65536
  t*: 30: 3000000 [0: 0]
  t0: 30: 3000000 [0: 0]
@ 0x1 0x2 0x3
  t*: 10: 1000000 [0: 0]
  t0: 10: 1000000 [0: 0]
@ 0x4 0x5
  t*: 20: 2000000 [0: 0]
  t1: 20: 2000000 [0: 0]
@ 0x6
  t*: 0: 0 [0: 0]

MAPPED_LIBRARIES:
55d0-55e0 r-xp 00000000 08:01 1 /opt/aragora/current/aragora
";

    #[test]
    fn parses_stacks_with_their_totals() {
        let samples = parse_heap_profile(PROFILE).unwrap();
        assert_eq!(
            samples,
            [
                Sample {
                    addresses: vec![1, 2, 3],
                    count: 10,
                    bytes: 1_000_000
                },
                Sample {
                    addresses: vec![4, 5],
                    count: 20,
                    bytes: 2_000_000
                },
            ]
        );
        assert!(parse_heap_profile("garbage").is_err());
    }

    #[test]
    fn purging_returns_freed_pages_to_the_os() {
        // jemalloc is this test binary's malloc too (unprefixed symbols).
        let arenas_before = purge_arenas();
        assert!(arenas_before >= 1);
        // Freed mid-sized blocks stay in the arenas as dirty pages until decay or a purge.
        let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 256 * 1024]).collect();
        assert_eq!(blocks[255][0], 255);
        drop(blocks);
        let before = allocator_stats().resident;
        purge_arenas();
        let after = allocator_stats().resident;
        assert!(
            before.saturating_sub(after) >= 16 * 1024 * 1024,
            "resident {before} → {after}"
        );
    }

    #[inline(never)]
    fn known_site() -> u64 {
        // The return address of a call made from inside this function.
        let mut ip = 0;
        backtrace::trace(|frame| {
            ip = frame.ip() as usize as u64;
            false
        });
        ip
    }

    #[test]
    fn symbolises_real_addresses_and_skips_allocator_frames() {
        assert!(is_allocator_frame("alloc::raw_vec::RawVec<T,A>::grow_one"));
        assert!(is_allocator_frame("__rust_alloc"));
        assert!(is_allocator_frame("__rustc::__rust_alloc (src/main.rs:4)"));
        assert!(is_allocator_frame("sqlite3DbMallocRawNN"));
        assert!(!is_allocator_frame("sqlite3VdbeSetNumCols"));
        assert!(is_allocator_frame(
            "with_capacity_in<alloc::alloc::Global> (library/alloc/src/raw_vec/mod.rs:433)"
        ));
        assert!(!is_allocator_frame("aragora::debate::engine::run"));
        let ip = known_site();
        let mut symbols = Symbolizer::default();
        let frames = symbols.frames(ip + 1);
        assert!(frames.iter().any(|f| f.contains("backtrace")), "{frames:?}");
        let sites = aggregate(
            &[
                Sample {
                    addresses: vec![ip + 1],
                    count: 2,
                    bytes: 10,
                },
                Sample {
                    addresses: vec![ip + 1],
                    count: 3,
                    bytes: 20,
                },
            ],
            &mut symbols,
        );
        assert_eq!(sites.len(), 1);
        assert_eq!((sites[0].bytes, sites[0].count), (30, 5));
    }
}
