//! `tessera-bench`, the load generator, works against real servers: a functional smoke test only (about a
//! second a run, zero errors, a non-empty report). How fast is for `scripts/bench`, never for a test.

use std::process::Command;

use crate::support::process::Serving;
use crate::support::redis::RedisServer;

fn bench(args: &[&str]) -> (String, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-bench")).args(args).output().expect("tessera-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "tessera-bench {args:?} failed:\n{stdout}\n{stderr}");
    let json = stderr.lines().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| panic!("no JSON: {stderr}"));
    (stdout, json)
}

#[test]
fn the_load_generator_drives_both_faces_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let server = Serving::start(&["--dev-dir", dev.to_str().unwrap()], |_| {});
    let targets = [format!("grpc://{}", server.grpc), format!("http://{}", server.http)];
    for target in &targets {
        for op in ["exchange", "introspect"] {
            let args = [
                "load",
                "--target",
                target,
                "--op",
                op,
                "--dev-dir",
                dev.to_str().unwrap(),
                "--duration",
                "1",
                "--warmup",
                "0.2",
                "--distinct",
                "40",
                "--connections",
                "2",
                "--in-flight",
                "4",
            ];
            let pid = server.pid().to_string();
            let (row, report) = bench(&[&args[..], &["--server-pid", &pid]].concat());
            assert!(row.starts_with('|'), "a table row: {row}");
            // The server's CPU per request over the measured window, and no Redis' without its pid.
            let cpu = report["server_cpu_us"].as_f64().unwrap_or_else(|| panic!("no server CPU: {report}"));
            assert!(cpu > 0.0 && report["redis_cpu_us"].is_null(), "{report}");
            // And its own, always: the load generator shares the machine with the server.
            assert!(report["load_generator_cpu_us"].as_f64().is_some_and(|us| us > 0.0), "{report}");
            assert_eq!(row.matches('|').count(), 15, "fourteen cells: {row}");
            assert_eq!(report["errors"], 0, "{report}");
            assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
            assert!(report["granted"].as_u64().unwrap() > 0, "{report}");
            assert!(report["refused"].as_u64().unwrap() > 0, "refused requests are in the mix: {report}");
            if op == "exchange" {
                assert!(report["depth2"].as_u64().unwrap() > 0, "delegated requests are in the mix: {report}");
            }
        }
    }
    let (row, ceiling) = bench(&["ceiling", "--duration", "0.2"]);
    assert!(row.contains("Ed25519 verify") && ceiling["exchange_per_core"].as_f64().unwrap() > 0.0, "{row}");
}

#[test]
fn revocation_propagation_is_measured_across_replicas_on_one_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    // Dev mode once, to generate the keys the replicas share; then the replicas from a config file.
    let first = Serving::start(&["--dev-dir", dev.to_str().unwrap()], |_| {});
    first.terminate();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(["config", "--dev-dir", dev.to_str().unwrap(), "--redis-url", &redis.url(), "--mode", "strict"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, &out.stdout).unwrap();
    let replicas: Vec<Serving> = (0..2)
        .map(|_| {
            Serving::start(&["--config", config.to_str().unwrap()], |c| {
                c.env("TESSERA__LOG__LEVEL", "info");
            })
        })
        .collect();
    let mut args = vec!["propagation".to_string(), "--dev-dir".into(), dev.display().to_string()];
    for r in &replicas {
        args.extend(["--replica".into(), format!("grpc://{}", r.grpc)]);
    }
    args.extend(["--rounds".into(), "20".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (row, report) = bench(&args);
    assert!(row.starts_with('|'), "{row}");
    assert_eq!(report["rounds"], 20, "{report}");
    assert_eq!(report["stale_first_answers"], 0, "strict: inactive on every replica once Revoke returns: {report}");
}
