//! `tessera`: parses the command line, starts logging, and hands over to the library.

mod cli;

/// mimalloc rather than the system allocator: a request allocates and frees many small buffers from several
/// worker threads, where glibc's malloc spent ~12% of an exchange's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
