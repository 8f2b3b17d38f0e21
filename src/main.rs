// jemalloc, so ARAGORA_MEMORY_PROFILING=1 can use its heap profiler (see telemetry::profiling).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    aragora::cli::run()
}
