//! A throwaway PostgreSQL cluster from the distribution's packages: `initdb` into a temp folder and
//! `pg_ctl start` on a free port (as the `postgres` user when the tests run as root: PostgreSQL refuses to run
//! as root), password authentication over TCP; stopped (immediately) when dropped. Fails with a clear message
//! when PostgreSQL is missing or does not start (`scripts/test` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::redis::free_port;

pub const SUPERUSER_PASSWORD: &str = "test-superuser-password";

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_root: bool,
    _dir: tempfile::TempDir,
}

/// The folder holding `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/<ver>/bin`, or `pg_ctl` on PATH.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("pg_ctl").exists()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(dir) = versions.pop() {
        return dir;
    }
    let found = Command::new("sh").args(["-c", "command -v pg_ctl"]).output().ok().filter(|o| o.status.success());
    match found {
        Some(o) => Path::new(String::from_utf8_lossy(&o.stdout).trim()).parent().unwrap().to_path_buf(),
        None => panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): run scripts/test"),
    }
}

impl Postgres {
    /// A command run as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let as_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
        if as_root {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(status.success(), "cannot hand the cluster's folder to the postgres user");
        }
        let port = free_port();
        let pg = Postgres { port, bin, data, as_root, _dir: dir };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "postgres", "-A", "scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let log = pg.data.parent().unwrap().join("postgres.log");
        let options =
            format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", pg.data.parent().unwrap().display());
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        pg
    }

    /// A connection as `user` with `password`.
    pub async fn connect(&self, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn superuser(&self) -> tokio_postgres::Client {
        self.connect("postgres", SUPERUSER_PASSWORD).await.expect("superuser connection")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]).output();
    }
}
