//! Real Redis for the tests: a `redis-server` started on a free port in a temporary folder (with an
//! append-only file, so a restart keeps the revocation list, as production Redis must), killed and restarted
//! at will; and a three-master Redis Cluster. No mocks: a missing `redis-server` fails the test with a clear
//! message (`bash scripts/test` installs it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn binary(name: &str) -> String {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok();
    match found.filter(|o| o.status.success()) {
        Some(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        None => panic!(
            "`{name}` is not installed: run the suite with `bash scripts/test`, which installs redis-server and redis-tools"
        ),
    }
}

/// A port that was free a moment ago, for servers that cannot bind port 0 and report it (Redis); a server that
/// then fails to start on it is retried on another (see [`RedisServer::start_with`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        // The port was only free a moment ago: if another process took it first, try another.
        for _ in 0..10 {
            if server.try_spawn() {
                return server;
            }
            server.port = free_port();
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "redis-server did not start again on port {}", self.port);
    }

    /// Starts redis-server on `self.port`; false if it could not have that port (it exited, or the port
    /// answers as another server, whose data folder is not ours).
    fn try_spawn(&mut self) -> bool {
        let child = Command::new(binary("redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_cmd(&["PING"]).is_none() {
            if self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        let dir = self.dir.path().canonicalize().unwrap_or_else(|_| self.dir.path().to_path_buf());
        let served: Option<Vec<String>> = redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
            .and_then(|mut conn| redis::cmd("CONFIG").arg("GET").arg("dir").query(&mut conn))
            .ok();
        let ours = served.is_some_and(|v| v.iter().any(|d| std::path::Path::new(d) == dir));
        if !ours {
            self.kill();
        }
        ours
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same data folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let value: redis::Value = cmd.query(&mut conn).ok()?;
        Some(match value {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::SimpleString(s) => s,
            redis::Value::Int(i) => i.to_string(),
            redis::Value::VerbatimString { text, .. } => text,
            other => format!("{other:?}"),
        })
    }

    /// Runs a command and returns its reply as text.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).unwrap_or_else(|| panic!("redis command {args:?} failed"))
    }

    /// `calls` per command from `INFO commandstats`, e.g. `[("mget", 1)]`.
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        self.cmd(&["INFO", "commandstats"])
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters, no replicas, formed with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]))
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let status = Command::new(binary("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes.iter().all(|n| n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
