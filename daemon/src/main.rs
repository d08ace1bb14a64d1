//! The `frontdesk` binary: daemon, admin CLI, relay and demo in one. All logic lives in the library.

fn main() -> std::process::ExitCode {
    frontdesk::cli::main()
}
