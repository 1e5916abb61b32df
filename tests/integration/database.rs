//! Short-lived PostgreSQL logins against a real PostgreSQL server (the distribution's packages, a throwaway
//! cluster started here) and a real `tessera serve` process: a token for the catalogued database audience
//! buys one login, valid until the token's expiry, holding only the database roles its granted scopes map to —
//! it reads the granted table and nothing else; once the token's task is revoked, or the token expires, the
//! login fails and its open connections are closed. Nothing from a request reaches SQL unquoted.

use std::time::{Duration, Instant};

use serde_json::Value;
use tessera::grpc::pb::{self, revoke_request::Target};

use crate::support::postgres::Postgres;
use crate::support::process::Serving;
use crate::support::*;

const DB: &str = "postgres://support-db";
const BROKER_PASSWORD: &str = "broker-db-password-6a1f0c";

fn policy() -> String {
    let base = std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap();
    format!(
        "{base}\n@id(\"support-db-read\")\npermit (principal, action == Tessera::Action::\"exchange\", resource == \
         Tessera::Audience::\"{DB}\")\nwhen {{ principal.issuer == \"kubernetes\" && context.scope == \"tickets:read\" }};\n"
    )
}

fn database_toml(port: u16) -> String {
    format!(
        r#"
[[audiences]]
id = "{DB}"
scopes = ["tickets:read", "tickets:write"]
max_ttl = 300
introspect_clients = ["gateway", "local"]

[[secrets]]
name = "support-db-broker"
file = "support-db-broker-password"

[proxy]
client = "gateway"

[[databases]]
audience = "{DB}"
port = {port}
user = "tessera_broker"
password_secret = "support-db-broker"
sweep_interval_ms = 200

[databases.grants]
"tickets:read" = ["support_read"]
"tickets:write" = ["support_write"]
"#
    )
}

fn proxy_addr(serving: &Serving) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = serving.logs().lines().find(|l| l.contains("tessera serving proxy")) {
            let (_, rest) = line.split_once("addr").unwrap();
            let start = rest.find(|c: char| c.is_ascii_digit()).unwrap();
            return rest[start..].chars().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':')).collect();
        }
        assert!(Instant::now() < deadline, "the proxy did not log its address:\n{}", serving.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn vend(proxy: &str, resource: &str, token: Option<&str>) -> (u16, Value) {
    let encoded: String = form_urlencoded::byte_serialize(resource.as_bytes()).collect();
    let mut r = reqwest::Client::new().post(format!("{proxy}/_tessera/database-credentials?resource={encoded}"));
    if let Some(token) = token {
        r = r.bearer_auth(token);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until `check` holds, or fails with `what`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the sweeper has finished with `role`: the role is dropped and its row is gone from the ledger.
/// (Closing its connections comes before the drop, so a closed connection alone does not mean the role is gone.)
async fn until_dropped(admin: &tokio_postgres::Client, role: &str) {
    eventually(&format!("the role {role} is not dropped, or not forgotten by the ledger"), || async {
        let roles = admin.query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role]).await.unwrap();
        let ledger = admin.query("SELECT 1 FROM tessera_vend.logins WHERE role = $1", &[&role]).await.unwrap();
        roles.is_empty() && ledger.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vended_login_reads_exactly_the_granted_tables_until_its_task_is_revoked_or_it_expires() {
    let pg = Postgres::start();
    let admin = pg.superuser().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE tickets (id int, body text); INSERT INTO tickets VALUES (1, 'printer on fire');
             CREATE TABLE payroll (id int, salary int); INSERT INTO payroll VALUES (1, 100000);
             CREATE ROLE support_read NOLOGIN; GRANT SELECT ON tickets TO support_read;
             CREATE ROLE support_write NOLOGIN; GRANT INSERT, UPDATE ON tickets TO support_write;
             CREATE ROLE tessera_broker LOGIN CREATEROLE PASSWORD '{BROKER_PASSWORD}';
             GRANT support_read, support_write TO tessera_broker WITH ADMIN OPTION;
             GRANT pg_signal_backend TO tessera_broker;
             DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO tessera_broker', current_database()); END $$;"
        ))
        .await
        .unwrap();
    let dir = TestBroker::builder().policy(&policy()).extra_toml(&database_toml(pg.port)).write_config();
    std::fs::write(dir.path().join("support-db-broker-password"), format!("{BROKER_PASSWORD}\n")).unwrap();
    let config = dir.path().join("tessera.toml");
    let serving = Serving::start(&["--config", config.to_str().unwrap(), "--proxy-addr", "127.0.0.1:0"], |c| {
        // Debug: the database client logs every statement it runs; no password may be among them.
        c.env("TESSERA__LOG__LEVEL", "debug");
    });
    let proxy = format!("http://{}", proxy_addr(&serving));
    let mut broker = pb::token_broker_client::TokenBrokerClient::connect(serving.url()).await.unwrap();

    // The support agent asks for read and write; policy grants read only, and the login holds only its role.
    let mut r = request(&k8s_assertion(600), DB, "tickets:read tickets:write");
    // A task id made to break out of a SQL literal: it goes into the role's comment, quoted.
    r.task_id = "t-1');DROP/**/TABLE/**/tickets;--".into();
    let issued = broker.exchange_token(r).await.unwrap().into_inner();
    assert_eq!(issued.scope, "tickets:read");
    let token = issued.access_token;
    let (status, login) = vend(&proxy, DB, Some(&token)).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["roles"], serde_json::json!(["support_read"]));
    assert_eq!(login["expires_at"], decode(&token).exp);
    let (user, password) = (login["username"].as_str().unwrap(), login["password"].as_str().unwrap().to_string());
    let mut passwords = vec![password.clone()];
    let row = admin
        .query_one(
            "SELECT extract(epoch FROM rolvaliduntil)::bigint, shobj_description(oid, 'pg_authid'), \
             array(SELECT b.rolname::text FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid \
                   WHERE m.member = r.oid) FROM pg_roles r WHERE rolname = $1",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0) as u64, decode(&token).exp, "VALID UNTIL is the token's expiry");
    assert!(row.get::<_, String>(1).contains("task=t-1');DROP/**/TABLE/**/tickets;--"), "the comment holds the text");
    assert_eq!(row.get::<_, Vec<String>>(2), ["support_read"]);

    // The login reads the granted table, and nothing else.
    let agent = pg.connect(user, &password).await.unwrap();
    let body: String = agent.query_one("SELECT body FROM tickets WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(body, "printer on fire");
    for refused in ["INSERT INTO tickets VALUES (2, 'x')", "SELECT * FROM payroll"] {
        let e = agent.batch_execute(refused).await.unwrap_err();
        assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{refused}");
    }

    // One login per token; none for no token, a token for another audience, or a database not catalogued
    // (whatever its name holds).
    assert_eq!(vend(&proxy, DB, Some(&token)).await.0, 409);
    assert_eq!(vend(&proxy, DB, None).await.0, 401);
    let crm = broker.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap().into_inner();
    assert_eq!(vend(&proxy, DB, Some(&crm.access_token)).await.0, 401);
    assert_eq!(vend(&proxy, "postgres://x\"; DROP ROLE tessera_broker; --", Some(&token)).await.0, 404);

    // Revoking the task: the open connection is closed, the login fails, the role is gone.
    let revoke = pb::RevokeRequest {
        target: Some(Target::TaskId("t-1');DROP/**/TABLE/**/tickets;--".into())),
        reason: "done".into(),
    };
    broker.revoke(revoke).await.unwrap();
    eventually("the revoked login's connection stays open", || async { agent.simple_query("SELECT 1").await.is_err() })
        .await;
    assert!(pg.connect(user, &password).await.is_err(), "a revoked login still logs in");
    until_dropped(&admin, user).await;

    // A login whose token expires: refused after its expiry, its connection closed, its role dropped.
    let mut r = request(&k8s_assertion(600), DB, "tickets:read");
    r.task_id = "task-short".into();
    r.requested_expires_in = 5;
    let short = broker.exchange_token(r).await.unwrap().into_inner().access_token;
    let (status, login) = vend(&proxy, DB, Some(&short)).await;
    assert_eq!(status, 200, "{login}");
    let (user, password) =
        (login["username"].as_str().unwrap().to_string(), login["password"].as_str().unwrap().to_string());
    passwords.push(password.clone());
    let open = pg.connect(&user, &password).await.unwrap();
    open.simple_query("SELECT 1").await.unwrap();
    eventually("the expired login's connection stays open", || async { open.simple_query("SELECT 1").await.is_err() })
        .await;
    assert!(pg.connect(&user, &password).await.is_err(), "an expired login still logs in");
    until_dropped(&admin, &user).await;

    // A login outlives the replica that vended it: another process (here a restart, its embedded store new)
    // finds it in the ledger, and a revocation there ends it — connection closed, role dropped.
    let mut r = request(&k8s_assertion(600), DB, "tickets:read");
    r.task_id = "task-restart".into();
    let kept = broker.exchange_token(r).await.unwrap().into_inner().access_token;
    let (status, login) = vend(&proxy, DB, Some(&kept)).await;
    assert_eq!(status, 200, "{login}");
    let (user, password) =
        (login["username"].as_str().unwrap().to_string(), login["password"].as_str().unwrap().to_string());
    passwords.push(password.clone());
    let survivor = pg.connect(&user, &password).await.unwrap();
    let e = survivor.batch_execute("SELECT * FROM tessera_vend.logins").await.unwrap_err();
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "the ledger is the broker's");
    let (_, first_logs) = serving.terminate();
    let serving = Serving::start(&["--config", config.to_str().unwrap(), "--proxy-addr", "127.0.0.1:0"], |c| {
        c.env("TESSERA__LOG__LEVEL", "debug");
    });
    let mut broker = pb::token_broker_client::TokenBrokerClient::connect(serving.url()).await.unwrap();
    survivor.simple_query("SELECT 1").await.expect("the login lives on while its token does");
    let revoke = pb::RevokeRequest { target: Some(Target::TaskId("task-restart".into())), reason: "done".into() };
    broker.revoke(revoke).await.unwrap();
    eventually("a login vended before the restart survives its task's revocation", || async {
        survivor.simple_query("SELECT 1").await.is_err()
    })
    .await;
    assert!(pg.connect(&user, &password).await.is_err(), "the login still logs in after its task's revocation");
    until_dropped(&admin, &user).await;
    let n: i64 = admin.query_one("SELECT count(*) FROM tessera_vend.logins", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the ledger forgets dropped logins");

    // The tables survived every request; no password reached the log.
    let n: i64 = admin.query_one("SELECT count(*) FROM tickets", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let (_, logs) = serving.terminate();
    let logs = format!("{first_logs}\n{logs}");
    for secret in passwords.iter().map(String::as_str).chain([BROKER_PASSWORD]) {
        assert!(!logs.contains(secret), "a database password reached the log");
    }
    assert!(logs.contains("database login dropped"), "{logs}");
    assert!(logs.contains("CREATE ROLE"), "the debug log shows the statements (so the check above means something)");
}

#[test]
fn databases_are_validated_with_every_problem_at_once() {
    let toml = r#"
[[audiences]]
id = "postgres://support-db"
scopes = ["tickets:read"]
max_ttl = 300
introspect_clients = ["local"]

[proxy]
client = "gateway"

[[databases]]
audience = "postgres://support-db"
user = "tessera_broker"
password_secret = "nowhere"
role_prefix = "Bad-Prefix"
sweep_interval_ms = 0

[databases.grants]
"tickets:read" = ["support_read", "x\"; DROP ROLE postgres; --"]
"tickets:delete" = ["support_admin"]

[[databases]]
audience = "postgres://unknown"
user = ""
password_secret = ""
"#;
    let dir = TestBroker::builder().extra_toml(toml).write_config();
    let errors = tessera::config::ConfigBuilder::load(&dir.path().join("tessera.toml"))
        .and_then(|b| b.build(dir.path()))
        .unwrap_err()
        .to_string();
    for expected in [
        "databases[0] (postgres://support-db): grants: scope `tickets:delete` is not offered",
        "databases[0] (postgres://support-db): grants.tickets:read: roles are lower-case SQL identifiers",
        "databases[0] (postgres://support-db): `role_prefix` is a lower-case SQL identifier",
        "databases[0] (postgres://support-db): `sweep_interval_ms` and `port` must be at least 1",
        "databases (postgres://support-db): proxy.client `gateway` may not introspect it",
        "databases (postgres://support-db): password_secret `nowhere` is not in [[secrets]]",
        "databases[1] (postgres://unknown): `audience` is not in the catalog",
        "databases[1] (postgres://unknown): `grants` must map at least one scope",
        "databases[1] (postgres://unknown): needs `user` and `password_secret`",
    ] {
        assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
    }
}
