//! Reloading without a restart, on real `tessera serve` processes whose config folder is laid out as the
//! kubelet lays out a mounted ConfigMap (`tessera.toml -> ..data/tessera.toml`, `..data -> ..<generation>`),
//! and updated as it updates one: the new generation is written beside the old, then `..data` is swapped by
//! a rename. A catalog, client or issuer change is in force within seconds on every replica; a policy with a
//! type error is refused at load and at reload while the old policy keeps deciding; SIGHUP reloads at once;
//! a change to a section fixed at start is refused whole.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tessera::grpc::pb::token_broker_client::TokenBrokerClient;

use crate::support::process::{Serving, tessera};
use crate::support::*;

const NEW: &str = "https://new.example";
const FILES: [&str; 3] = ["tessera.toml", "policy.cedar", "signing.pem"];

/// A config folder as a mounted ConfigMap: one `..<generation>` folder per version, `..data` pointing at the
/// current one, and each file a symlink through `..data`.
struct ConfigMap {
    dir: tempfile::TempDir,
    generation: usize,
}

impl ConfigMap {
    /// Publishes `builder`'s config (and its policy and signing key) as the first generation.
    fn new(builder: &TestBrokerBuilder) -> ConfigMap {
        let map = ConfigMap { dir: tempfile::tempdir().unwrap(), generation: 0 };
        map.write_generation(builder);
        std::os::unix::fs::symlink("..gen0", map.dir.path().join("..data")).unwrap();
        for name in FILES {
            std::os::unix::fs::symlink(format!("..data/{name}"), map.dir.path().join(name)).unwrap();
        }
        map
    }

    fn write_generation(&self, builder: &TestBrokerBuilder) {
        let written = builder.write_config();
        let generation = self.dir.path().join(format!("..gen{}", self.generation));
        std::fs::create_dir(&generation).unwrap();
        for name in FILES {
            std::fs::copy(written.path().join(name), generation.join(name)).unwrap();
        }
    }

    /// Publishes a new generation the way the kubelet does: written whole beside the old one, `..data`
    /// swapped by one rename, the old generation removed.
    fn publish(&mut self, builder: &TestBrokerBuilder) {
        let old = self.dir.path().join(format!("..gen{}", self.generation));
        self.generation += 1;
        self.write_generation(builder);
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(format!("..gen{}", self.generation), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        std::fs::remove_dir_all(old).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tessera.toml")
    }
}

/// The test config: the default catalog, clients and issuers, one signing key for every generation, the
/// Prometheus endpoint on.
fn builder(key: &str) -> TestBrokerBuilder {
    TestBroker::builder().signing_key(key).extra_toml("\n[telemetry]\nprometheus = true\n")
}

/// With `https://new.example` catalogued and granted to the orchestrator.
fn with_new_audience(builder: TestBrokerBuilder) -> TestBrokerBuilder {
    let policy = std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap()
        + "\n@id(\"new-read\")\npermit (principal, action == Tessera::Action::\"exchange\", resource == Tessera::Audience::\"https://new.example\")\nwhen { principal.issuer == \"kubernetes\" && context.scope == \"new:read\" };\n";
    builder
        .extra_toml(&format!(
            "\n[[audiences]]\nid = \"{NEW}\"\nscopes = [\"new:read\"]\nmax_ttl = 60\nintrospect_clients = [\"gateway\"]\n"
        ))
        .policy(&policy)
}

/// `tessera serve` on `config`, logging at info, checking the files every `interval` seconds (0: never).
fn serve(config: &Path, interval: u64) -> Serving {
    Serving::start(&["--config", config.to_str().unwrap()], |c| {
        c.env("TESSERA__LOG__LEVEL", "info")
            .env("TESSERA__SERVER__CONFIG_RELOAD_INTERVAL", interval.to_string())
            .env_remove("RUST_LOG");
    })
}

/// An exchange of the orchestrator's assertion for `scope` on `audience`, as `client` (Basic, with the test
/// secret) or the loopback client: the OAuth error code, or `ok`.
async fn exchange(replica: &Serving, audience: &str, scope: &str, subject: &str, client: Option<&str>) -> String {
    let mut grpc = TokenBrokerClient::connect(replica.url()).await.expect("connect");
    let mut request = tonic::Request::new(request(subject, audience, scope));
    if let Some(id) = client {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{CLIENT_SECRET}"));
        request.metadata_mut().insert("authorization", format!("Basic {basic}").parse().unwrap());
    }
    match grpc.exchange_token(request).await {
        Ok(_) => "ok".into(),
        Err(status) => oauth_error(&status),
    }
}

/// Polls `check` until it answers `want` or `within` has passed; returns the last answer.
async fn until(within: Duration, want: &str, mut check: impl AsyncFnMut() -> String) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = check().await;
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the Prometheus sample `name` whose labels include `label`, 0 when absent.
async fn metric(replica: &Serving, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", replica.http)).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls the replica's log until it holds `needle`.
async fn logged(replica: &Serving, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica.logs().contains(needle) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

const SETTLE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_catalog_change_on_disk_is_in_force_on_every_replica_within_seconds_without_a_restart() {
    let key = shared_signing_key();
    let mut map = ConfigMap::new(&builder(&key));
    let replicas = [serve(&map.config(), 1), serve(&map.config(), 1)];
    let pids: Vec<u32> = replicas.iter().map(Serving::pid).collect();
    let assertion = k8s_assertion(600);
    for replica in &replicas {
        assert_eq!(exchange(replica, NEW, "new:read", &assertion, None).await, "invalid_target");
        assert!(metric(replica, "tessera_config_loaded_seconds", "").await > 1.7e9, "loaded at start");
    }

    map.publish(&with_new_audience(builder(&key)));
    for replica in &replicas {
        let got = until(SETTLE, "ok", async || exchange(replica, NEW, "new:read", &assertion, None).await).await;
        assert_eq!(got, "ok", "the new audience is in force:\n{}", replica.logs());
        assert!(replica.logs().contains("configuration reloaded"), "{}", replica.logs());
        assert!(metric(replica, "tessera_config_reloads_total", "outcome=\"ok\"").await >= 1.0);
        // What was in force before still is.
        assert_eq!(exchange(replica, CRM, "crm:read", &assertion, None).await, "ok");
    }
    assert_eq!(replicas.iter().map(Serving::pid).collect::<Vec<_>>(), pids, "no replica restarted");
}

#[tokio::test]
async fn a_policy_with_a_type_error_is_refused_at_load_and_at_reload_and_the_old_policy_keeps_deciding() {
    let key = shared_signing_key();
    let mut map = ConfigMap::new(&builder(&key));
    let replica = serve(&map.config(), 1);
    let assertion = k8s_assertion(600);
    assert_eq!(exchange(&replica, CRM, "crm:read", &assertion, None).await, "ok");
    assert_eq!(exchange(&replica, CRM, "crm:export", &assertion, None).await, "invalid_scope");

    // A string compared with `<`: it parses, but the schema says `context.scope` is a String.
    let policy = std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap()
        + "\n@id(\"ill-typed\")\npermit (principal, action, resource) when { context.scope < 3 };\n";
    let bad = builder(&key).policy(&policy);
    let written = bad.write_config();
    let check = tessera().args(["config", "check"]).arg(written.path().join("tessera.toml")).output().unwrap();
    let refusal = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(!check.status.success() && refusal.contains("policy"), "refused at load: {refusal}");

    map.publish(&bad);
    assert!(logged(&replica, "configuration not reloaded").await, "{}", replica.logs());
    let log = replica.logs();
    let line = log.lines().find(|l| l.contains("configuration not reloaded")).unwrap();
    assert!(line.contains("ERROR") && line.contains("policy") && line.contains("unexpected type"), "says why: {line}");
    assert_eq!(metric(&replica, "tessera_config_reloads_total", "outcome=\"failed\"").await, 1.0);
    assert_eq!(metric(&replica, "tessera_config_reloads_total", "outcome=\"ok\"").await, 0.0);
    // The old policy still decides: what it allowed is allowed, what it refused is refused.
    assert_eq!(exchange(&replica, CRM, "crm:read", &assertion, None).await, "ok");
    assert_eq!(exchange(&replica, CRM, "crm:export", &assertion, None).await, "invalid_scope");
    // Refused once per content, not at every check.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(replica.logs().matches("configuration not reloaded").count(), 1, "{}", replica.logs());

    // Fixed, it takes.
    map.publish(&with_new_audience(builder(&key)));
    let got = until(SETTLE, "ok", async || exchange(&replica, NEW, "new:read", &assertion, None).await).await;
    assert_eq!(got, "ok", "{}", replica.logs());
}

#[tokio::test]
async fn sighup_reloads_at_once_and_a_section_fixed_at_start_is_refused_whole() {
    let key = shared_signing_key();
    let mut map = ConfigMap::new(&builder(&key));
    // No file watch: only SIGHUP reloads.
    let replica = serve(&map.config(), 0);
    let assertion = k8s_assertion(600);
    map.publish(&with_new_audience(builder(&key)));
    assert_eq!(exchange(&replica, NEW, "new:read", &assertion, None).await, "invalid_target", "nothing yet");

    let hup = || std::process::Command::new("kill").args(["-HUP", &replica.pid().to_string()]).status().unwrap();
    assert!(hup().success());
    let got = until(SETTLE, "ok", async || exchange(&replica, NEW, "new:read", &assertion, None).await).await;
    assert_eq!(got, "ok", "{}", replica.logs());
    assert!(replica.logs().contains("trigger=\"SIGHUP\"") || replica.logs().contains("trigger=SIGHUP"));

    // A change to [server] (and to the catalog) is refused whole: the catalog change waits for a restart.
    let fixed = builder(&key).extra_toml("\n[server]\nmax_request_bytes = 100000\n");
    map.publish(&fixed);
    assert!(hup().success());
    assert!(logged(&replica, "configuration not reloaded").await, "{}", replica.logs());
    let log = replica.logs();
    let line = log.lines().find(|l| l.contains("configuration not reloaded")).unwrap();
    assert!(line.contains("[server]") && line.contains("restart"), "{line}");
    assert_eq!(exchange(&replica, NEW, "new:read", &assertion, None).await, "ok", "the set in force stays");
    // Off the test's runtime, which must keep running to close the gRPC connections the server drains.
    let (status, log) = tokio::task::spawn_blocking(move || replica.terminate()).await.unwrap();
    assert!(status.success(), "SIGHUP never stopped it: {log}");
}

#[tokio::test]
async fn clients_and_issuers_follow_the_config_on_disk() {
    let key = shared_signing_key();
    let secret = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CLIENT_SECRET.as_bytes()));
    let only_kubernetes = default_issuers_toml().split("[[issuers]]").nth(1).map(|k| format!("[[issuers]]{k}"));
    let before = builder(&key).issuers_toml(&only_kubernetes.unwrap());
    let mut map = ConfigMap::new(&before);
    let replica = serve(&map.config(), 1);
    let (k8s, svid) = (k8s_assertion(600), spiffe_assertion(600));
    assert_eq!(exchange(&replica, CRM, "crm:read", &k8s, Some("orchestrator")).await, "ok");
    assert_eq!(exchange(&replica, CRM, "crm:read", &k8s, Some("newcomer")).await, "invalid_client");
    assert_eq!(exchange(&replica, CRM, "crm:read", &svid, None).await, "invalid_grant", "SPIFFE not trusted yet");

    // The orchestrator leaves, a newcomer joins, the SPIFFE trust domain is trusted.
    let clients = default_clients_toml(&secret).replace("id = \"orchestrator\"", "id = \"newcomer\"");
    map.publish(&builder(&key).clients_toml(&clients));
    let got = until(SETTLE, "ok", async || exchange(&replica, CRM, "crm:read", &k8s, Some("newcomer")).await).await;
    assert_eq!(got, "ok", "{}", replica.logs());
    assert_eq!(exchange(&replica, CRM, "crm:read", &k8s, Some("orchestrator")).await, "invalid_client");
    assert_eq!(exchange(&replica, CRM, "crm:read", &svid, None).await, "ok", "the added issuer is trusted");
}

#[tokio::test]
async fn an_added_issuer_has_its_keys_before_it_serves_and_its_refresh_follows_the_new_set() {
    let key = shared_signing_key();
    let keys_dir = tempfile::tempdir().unwrap();
    let spiffe_jwks = keys_dir.path().join("spiffe.jwks.json");
    std::fs::copy(fixtures().join("spiffe.jwks.json"), &spiffe_jwks).unwrap();
    let github = crate::support::jwks_server::JwksServer::start(
        std::fs::read_to_string(fixtures().join("github.jwks.json")).unwrap(),
    )
    .await;
    let kubernetes = default_issuers_toml().split("[[issuers]]").nth(1).map(|k| format!("[[issuers]]{k}")).unwrap();
    let mut map = ConfigMap::new(&builder(&key).issuers_toml(&kubernetes));
    // No file watch: what changes after the SIGHUP can only come from the new set's own refresh tasks.
    let replica = serve(&map.config(), 0);
    let (svid, gh) = (spiffe_assertion(600), github_assertion(600));
    assert_eq!(exchange(&replica, CRM, "crm:read", &svid, None).await, "invalid_grant");

    let added = format!(
        "{kubernetes}\n[[issuers]]\nname = \"spiffe\"\nspiffe_trust_domain = \"agents.example.org\"\njwks_file = \"{}\"\nalgorithms = [\"ES256\", \"RS256\"]\nmin_refresh_interval = 1\n\n[[issuers]]\nname = \"github\"\nissuer = \"{GITHUB_ISS}\"\njwks_url = \"{}\"\nalgorithms = [\"RS256\"]\nattributes = {{ repository = \"/repository\", ref = \"/ref\" }}\n",
        spiffe_jwks.display(),
        github.url,
    );
    map.publish(&builder(&key).issuers_toml(&added));
    assert!(std::process::Command::new("kill").args(["-HUP", &replica.pid().to_string()]).status().unwrap().success());
    assert!(logged(&replica, "configuration reloaded").await, "{}", replica.logs());
    assert!(github.hits() >= 1, "the jwks_url set is fetched by the reload, before the new set serves");
    assert_eq!(exchange(&replica, CRM, "crm:read", &svid, None).await, "ok", "{}", replica.logs());
    assert_eq!(exchange(&replica, OTHER, "other:read", &gh, None).await, "ok", "{}", replica.logs());

    // The SPIFFE key is withdrawn from its file (an RS256 set takes its place): the new set's refresh task
    // notices within its interval.
    std::fs::copy(fixtures().join("github.jwks.json"), &spiffe_jwks).unwrap();
    let got = until(SETTLE, "invalid_grant", async || exchange(&replica, CRM, "crm:read", &svid, None).await).await;
    assert_eq!(got, "invalid_grant", "{}", replica.logs());
}

#[tokio::test]
async fn sighup_in_dev_mode_is_logged_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Serving::start(&["--dev-dir", dir.path().join(".tessera-dev").to_str().unwrap()], |c| {
        c.env("TESSERA__LOG__LEVEL", "info").env_remove("RUST_LOG").env_remove("TESSERA_CONFIG");
    });
    assert!(std::process::Command::new("kill").args(["-HUP", &replica.pid().to_string()]).status().unwrap().success());
    assert!(logged(&replica, "dev mode has no configuration file to reload").await, "{}", replica.logs());
    let health = reqwest::get(format!("http://{}/healthz", replica.http)).await.unwrap();
    assert!(health.status().is_success(), "still serving after SIGHUP");
}

#[tokio::test]
async fn environment_overrides_apply_to_a_reload_as_at_start() {
    let key = shared_signing_key();
    let mut map = ConfigMap::new(&builder(&key));
    // The environment names a policy that grants upstream workloads nothing, over the file's policy.
    let elsewhere = tempfile::tempdir().unwrap();
    let nothing = elsewhere.path().join("nothing.cedar");
    std::fs::write(&nothing, "// grants nothing\nforbid (principal, action, resource);\n").unwrap();
    let replica = Serving::start(&["--config", map.config().to_str().unwrap()], |c| {
        c.env("TESSERA__LOG__LEVEL", "info")
            .env("TESSERA__SERVER__CONFIG_RELOAD_INTERVAL", "1")
            .env("TESSERA__POLICY__FILE", &nothing)
            .env_remove("RUST_LOG");
    });
    let assertion = k8s_assertion(600);
    assert_eq!(exchange(&replica, CRM, "crm:read", &assertion, None).await, "invalid_scope");

    map.publish(&with_new_audience(builder(&key)));
    let got =
        until(SETTLE, "invalid_scope", async || exchange(&replica, NEW, "new:read", &assertion, None).await).await;
    assert_eq!(
        got,
        "invalid_scope",
        "the new audience is catalogued, and the policy still refuses:\n{}",
        replica.logs()
    );
    assert_eq!(exchange(&replica, CRM, "crm:read", &assertion, None).await, "invalid_scope", "the override holds");
}
