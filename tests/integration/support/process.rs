//! `tessera serve` as a separate process, the way a user runs it: both faces listen on `127.0.0.1:0` and the
//! server's own log says which ports it got (no bind-then-drop guess that another test could take first).
//! Its log lines are collected as they arrive; it is stopped with SIGTERM (or killed when dropped).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The built binary.
pub fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

pub struct Serving {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// The gRPC face's address (`127.0.0.1:port`).
    pub grpc: String,
    /// The HTTP face's address.
    pub http: String,
}

impl Serving {
    /// Runs `tessera serve` with `args` (plus `--grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0`), as set up
    /// by `configure` (environment, folder); returns once it has logged both addresses (at `info`: a config
    /// whose log level is `warn` needs `TESSERA__LOG__LEVEL=info`).
    pub fn start(args: &[&str], configure: impl FnOnce(&mut Command)) -> Serving {
        let mut command = tessera();
        command.arg("serve").args(args).args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
        configure(&mut command);
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("tessera serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = mpsc::channel();
        std::thread::spawn({
            let logs = Arc::clone(&logs);
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line.clone());
                    let _ = sender.send(line);
                }
            }
        });
        let mut serving = Serving { child, logs, grpc: String::new(), http: String::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while serving.grpc.is_empty() || serving.http.is_empty() {
            let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                panic!("tessera serve did not log its gRPC and HTTP addresses:\n{}", serving.logs());
            };
            if let Some(addr) = logged_addr(&line, "tessera serving gRPC") {
                serving.grpc = addr;
            }
            if let Some(addr) = logged_addr(&line, "tessera serving HTTP") {
                serving.http = addr;
            }
        }
        serving
    }

    /// The gRPC face as a client `--addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Stops it with SIGTERM (as Kubernetes does) and waits for it to exit; returns how it exited and its
    /// whole log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "tessera did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread ends with the pipe; give it a moment to take the last lines.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.logs) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        (status, self.logs())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address a log line reports after `what`, in the text format (`… addr=127.0.0.1:5`) or JSON
/// (`"addr":"127.0.0.1:5"`).
fn logged_addr(line: &str, what: &str) -> Option<String> {
    let (_, rest) = line.split_once(what)?;
    let (_, rest) = rest.split_once("addr")?;
    let start = rest.find(|c: char| c.is_ascii_digit() || c == '[')?;
    let addr: String =
        rest[start..].chars().take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')).collect();
    (!addr.is_empty()).then_some(addr)
}
