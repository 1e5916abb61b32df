//! `tessera`: parses the command line, starts logging, and hands over to the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
