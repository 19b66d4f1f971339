fn main() -> std::process::ExitCode {
    selftrain_cli::main()
}
