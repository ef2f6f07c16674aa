use std::process::ExitCode;

fn main() -> ExitCode {
    mailgate::cli::main()
}
