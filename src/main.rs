fn main() -> std::process::ExitCode {
    aragora::cli::run()
}
