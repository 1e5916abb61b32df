//! The attack table: named attacks against two live replicas (`tessera serve` processes on one real Redis,
//! TLS and mTLS on, client secrets on), each answered with its exact status and OAuth error, and each issuing
//! nothing (the replicas' own `tessera_exchanges_total{outcome="granted"}` does not move across the attempt,
//! and the answer carries no token); afterwards neither replica's debug log holds a token, an assertion, a
//! proof, a secret or a raw control character.
//!
//! Attacks that need a setup (a token to revoke, an agent to suspend) make it through the same face first,
//! with the legitimate clients; only the attempt itself is measured.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::process::Serving;
use crate::support::redis::RedisServer;
use crate::support::*;
use crate::tls::{Pki, write_leaf};

const PAYMENTS: &str = "https://payments.example";
const VICTIM: &str = "system:serviceaccount:agents:victim";
const SUSPECT: &str = "system:serviceaccount:agents:suspect";

/// Who calls.
#[derive(Clone, Copy)]
enum As {
    /// The orchestrator (exchange only).
    Orchestrator,
    /// A second exchange client, revoked by one attack.
    Second,
    /// A third exchange client, suspended by one attack.
    Third,
    /// The gateway (introspect; registered for every audience).
    Gateway,
    /// An auditor (introspect), not registered for the payments audience.
    Auditor,
    /// The operator (every RPC).
    Operator,
    /// No credentials at all.
    Nobody,
}

impl As {
    fn authorization(self) -> Option<String> {
        let id = match self {
            As::Orchestrator => "orchestrator",
            As::Second => "second",
            As::Third => "third",
            As::Gateway => "gateway",
            As::Auditor => "auditor",
            As::Operator => "local",
            As::Nobody => return None,
        };
        Some(basic(id, CLIENT_SECRET))
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
}

type Form = Vec<(&'static str, String)>;

/// A form pair that [`Table::post`] sends as the `DPoP` header.
const DPOP_HEADER: &str = "DPoP header";
/// The token endpoint a DPoP proof for an exchange names (RFC 8414 `token_endpoint` under the issuer).
const TOKEN_HTU: &str = "https://tessera.test/oauth2/token";

fn with_proof(mut form: Form, proof: String) -> Form {
    form.push((DPOP_HEADER, proof));
    form
}

/// Two live replicas (`tessera serve` processes) on one real Redis, serving TLS (and mTLS) on both faces, with
/// client secrets on; the attempts alternate between them, so every setup step (a revocation, a suspension,
/// a spent assertion or proof) is seen by an attempt on the other replica.
struct Table {
    replicas: Vec<Serving>,
    https: reqwest::Client,
    next: std::sync::atomic::AtomicUsize,
    names: BTreeSet<&'static str>,
    _redis: RedisServer,
    _config: tempfile::TempDir,
}

impl Table {
    async fn start() -> Table {
        let redis = RedisServer::start();
        let pki = Pki::new("tessera attack-run CA");
        let secret = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CLIENT_SECRET.as_bytes()));
        let extra = format!(
            r#"
[[audiences]]
id = "{PAYMENTS}"
scopes = ["pay:read"]
max_ttl = 120
introspect_clients = ["gateway"]

[[clients]]
id = "second"
secret_sha256 = "{secret}"
rpcs = ["exchange"]

[[clients]]
id = "third"
secret_sha256 = "{secret}"
rpcs = ["exchange"]

[[clients]]
id = "auditor"
secret_sha256 = "{secret}"
rpcs = ["introspect"]

[tls]
cert_file = "server.crt"
key_file = "server.key"
client_ca_file = "clients-ca.pem"

[telemetry]
prometheus = true
"#
        );
        let policy = std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap()
            + "\npermit (principal, action == Tessera::Action::\"exchange\", resource == Tessera::Audience::\"https://payments.example\")\nwhen { principal.issuer == \"kubernetes\" && context.scope == \"pay:read\" };\n";
        // The SPIFFE issuer mints one assertion per request: each is good once, on any replica.
        let issuers = default_issuers_toml().replace(
            "name = \"spiffe\"\nspiffe_trust_domain = \"agents.example.org\"",
            "name = \"spiffe\"\nspiffe_trust_domain = \"agents.example.org\"\nsingle_use = true",
        );
        assert!(issuers.contains("single_use = true"));
        let config = TestBroker::builder()
            .broker_toml("max_delegation_depth = 2")
            .extra_toml(&extra)
            .policy(&policy)
            .issuers_toml(&issuers)
            .without_loopback_client()
            .redis(&redis.url(), "strict")
            .write_config();
        write_leaf(config.path(), "server", &pki.server());
        std::fs::write(config.path().join("clients-ca.pem"), &pki.ca_pem).unwrap();
        let file = config.path().join("tessera.toml");
        // Both replicas sign with the same key (write_config wrote one signing.pem) and share the Redis.
        let replicas: Vec<Serving> = (0..2)
            .map(|_| {
                Serving::start(&["--config", file.to_str().unwrap()], |c| {
                    c.env("TESSERA__LOG__LEVEL", "debug").env_remove("RUST_LOG");
                })
            })
            .collect();
        let https = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        Table {
            replicas,
            https,
            next: std::sync::atomic::AtomicUsize::new(0),
            names: BTreeSet::new(),
            _redis: redis,
            _config: config,
        }
    }

    fn url(replica: &Serving, path: &str) -> String {
        format!("https://localhost:{}{path}", replica.http.rsplit(':').next().unwrap())
    }

    /// Exchanges granted so far, as the replicas count them (their Prometheus endpoints).
    async fn granted(&self) -> f64 {
        let mut total = 0.0;
        for replica in &self.replicas {
            let text = self.https.get(Table::url(replica, "/metrics")).send().await.unwrap().text().await.unwrap();
            total += text
                .lines()
                .filter(|l| l.starts_with("tessera_exchanges_total{") && l.contains("outcome=\"granted\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        total
    }

    /// POSTs `form` to the next replica; a `DPOP_HEADER` pair is sent as the `DPoP` header instead of a form
    /// field.
    async fn post(&self, path: &str, form: &[(&str, String)], who: As) -> (u16, Value) {
        let replica = &self.replicas[self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2];
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().filter(|(k, _)| *k != DPOP_HEADER).map(|(k, v)| (*k, v.as_str())))
            .finish();
        let mut request = self
            .https
            .post(Table::url(replica, path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (_, proof) in form.iter().filter(|(k, _)| *k == DPOP_HEADER) {
            request = request.header("dpop", proof);
        }
        if let Some(a) = who.authorization() {
            request = request.header("authorization", a);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
    }

    /// A setup step that must work: the token it issues.
    async fn issue(&self, form: Form, who: As) -> String {
        let (status, body) = self.post("/oauth2/token", &form, who).await;
        assert_eq!(status, 200, "setup exchange refused: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn ok(&self, path: &str, form: Form, who: As) {
        let (status, body) = self.post(path, &form, who).await;
        assert_eq!(status, 200, "setup call to {path} refused: {body}");
    }

    /// One attack: refused with exactly `status` and `error`, and nothing issued.
    async fn refused(&mut self, name: &'static str, path: &str, form: Form, who: As, status: u16, error: &str) {
        assert!(self.names.insert(name), "attack {name:?} is in the table twice");
        let before = self.granted().await;
        let (got, body) = self.post(path, &form, who).await;
        assert_eq!((got, body["error"].as_str()), (status, Some(error)), "attack {name:?}: {body}");
        assert!(body.get("access_token").is_none(), "attack {name:?} got a token: {body}");
        assert_eq!(self.granted().await, before, "attack {name:?} issued a token");
    }

    /// One attack on introspection: answered `{"active": false}` and nothing more.
    async fn inactive(&mut self, name: &'static str, token: &str, who: As) {
        assert!(self.names.insert(name), "attack {name:?} is in the table twice");
        let (status, body) = self.post("/oauth2/introspect", &[("token", token.to_string())], who).await;
        assert_eq!((status, &body), (200, &json!({ "active": false })), "attack {name:?}");
    }
}

fn exchange(subject: &str, audience: &str, scope: &str, task: &str) -> Form {
    let subject_type = if is_tessera(subject) { ACCESS_TOKEN } else { JWT };
    let mut form: Form = vec![
        ("grant_type", TOKEN_EXCHANGE.into()),
        ("subject_token", subject.into()),
        ("subject_token_type", subject_type.into()),
        ("audience", audience.into()),
        ("scope", scope.into()),
    ];
    if !task.is_empty() {
        form.push(("task_id", task.into()));
    }
    form
}

fn with_actor(mut form: Form, actor: &str) -> Form {
    let actor_type = if is_tessera(actor) { ACCESS_TOKEN } else { JWT };
    form.push(("actor_token", actor.into()));
    form.push(("actor_token_type", actor_type.into()));
    form
}

fn is_tessera(token: &str) -> bool {
    token
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .is_some_and(|bytes| serde_json::from_slice::<Value>(&bytes).is_ok_and(|c| c["iss"] == BROKER))
}

fn k8s_for(sub: &str, f: impl FnOnce(&mut Value)) -> String {
    let mut c = claims("kubernetes", 600);
    c["sub"] = sub.into();
    f(&mut c);
    Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &c)
}

fn k8s_with(f: impl FnOnce(&mut Value)) -> String {
    k8s_for(ORCHESTRATOR, f)
}

/// A single-use SPIFFE JWT-SVID for `sub` (a fresh `jti`).
fn svid(sub: &str) -> String {
    let mut c = claims("spiffe", 600);
    c["sub"] = sub.into();
    c["jti"] = format!("svid-{}", uuid()).into();
    Signer::es256("spiffe.key.pem").token(&kid("spiffe.jwks.json"), &c)
}

fn uuid() -> String {
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

#[tokio::test]
async fn every_attack_in_the_table_is_refused_and_issues_nothing() {
    let mut t = Table::start().await;
    let token = "/oauth2/token";

    // Forged, malformed and misdirected subject tokens (the same list the gRPC face is checked with).
    for (name, subject) in crate::bad_input::bad_subject_tokens() {
        let name: &'static str = Box::leak(format!("subject token: {name}").into_boxed_str());
        t.refused(name, token, exchange(&subject, CRM, "crm:read", "atk"), As::Orchestrator, 400, "invalid_grant")
            .await;
    }
    let k8s_kid = kid("kubernetes.jwks.json");
    let k8s = Signer::rs256("kubernetes.key.pem");
    let with_header = |extra: Value| {
        let mut h = json!({ "typ": "JWT", "kid": k8s_kid });
        h.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        k8s.token_with_header(h, &claims("kubernetes", 600))
    };
    let cases = [
        ("kid path traversal", with_header(json!({ "kid": "../../../../etc/passwd" }))),
        ("kid injection", with_header(json!({ "kid": "x' OR '1'='1" }))),
        ("x5c header", with_header(json!({ "x5c": ["MIIBszCCAVmgAwIBAgIUAA=="] }))),
        // Edges at the leeway (30 s): an expired assertion yields nothing even within it.
        ("expired a second ago", k8s_with(|c| c["exp"] = (now() - 1).into())),
        ("not valid for another leeway and a minute", k8s_with(|c| c["nbf"] = (now() + 90).into())),
        ("lives longer than its issuer allows", k8s_with(|c| c["exp"] = (now() + 40 * 86_400).into())),
        ("a huge claim", k8s_with(|c| c["pad"] = "é".repeat(6000).into())),
        ("a sub with a control character", k8s_for("system:serviceaccount:agents:a\u{7}b", |_| {})),
        ("a sub of 4000 characters", k8s_for(&"ü".repeat(4000), |_| {})),
    ];
    for (name, subject) in cases {
        t.refused(name, token, exchange(&subject, CRM, "crm:read", "atk"), As::Orchestrator, 400, "invalid_grant")
            .await;
    }

    // Replays: a single-use assertion works once, on any replica.
    let once = svid(SPIFFE_AGENT);
    t.issue(exchange(&once, CRM, "crm:read", "atk-once"), As::Orchestrator).await;
    t.refused(
        "replayed single-use assertion",
        token,
        exchange(&once, CRM, "crm:read", "atk-once"),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    t.refused(
        "actor token: alg none",
        token,
        with_actor(
            exchange(&k8s_assertion(600), CRM, "crm:read", "atk"),
            &format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims("spiffe", 600).to_string().as_bytes())),
        ),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;

    // Delegation: may_act, depth, widening by re-exchange.
    let only_other = k8s_with(|c| {
        c["may_act"] =
            json!({ "iss": "spiffe://agents.example.org", "sub": "spiffe://agents.example.org/ns/agents/sa/other" })
    });
    t.refused(
        "actor not named by may_act",
        token,
        with_actor(exchange(&only_other, CRM, "crm:read", "atk"), &svid(SPIFFE_AGENT)),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    let task = t.issue(exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-task"), As::Orchestrator).await;
    let hop1 =
        t.issue(with_actor(exchange(&task, BROKER, "crm:read", ""), &svid(SPIFFE_AGENT)), As::Orchestrator).await;
    let hop2 = t
        .issue(
            with_actor(exchange(&hop1, BROKER, "crm:read", ""), &svid("spiffe://agents.example.org/ns/agents/sa/b")),
            As::Orchestrator,
        )
        .await;
    t.refused(
        "delegation deeper than max_delegation_depth",
        token,
        with_actor(exchange(&hop2, CRM, "crm:read", ""), &svid("spiffe://agents.example.org/ns/agents/sa/c")),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    t.refused(
        "scope widening by re-exchange",
        token,
        exchange(&task, CRM, "crm:write", ""),
        As::Orchestrator,
        400,
        "invalid_scope",
    )
    .await;
    t.refused(
        "a scope the catalog does not offer",
        token,
        exchange(&task, CRM, "crm:admin", ""),
        As::Orchestrator,
        400,
        "invalid_scope",
    )
    .await;
    t.refused(
        "an audience outside the catalog",
        token,
        exchange(&task, "https://attacker.example", "crm:read", ""),
        As::Orchestrator,
        400,
        "invalid_target",
    )
    .await;
    t.refused(
        "changing the task of a task token",
        token,
        exchange(&task, CRM, "crm:read", "another-task"),
        As::Orchestrator,
        400,
        "invalid_request",
    )
    .await;
    let downstream = t.issue(exchange(&task, CRM, "crm:read", ""), As::Orchestrator).await;
    t.refused(
        "a downstream token as actor",
        token,
        with_actor(exchange(&k8s_assertion(600), CRM, "crm:read", "atk"), &downstream),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    t.refused(
        "a downstream token re-exchanged for another audience",
        token,
        exchange(&downstream, OTHER, "other:read", ""),
        As::Orchestrator,
        400,
        "invalid_target",
    )
    .await;

    // DPoP (RFC 9449): a proof binds the token to its key; a proof for another request, a replayed proof or
    // another key's proof gets nothing.
    let key = crate::dpop::DpopKey::ec();
    t.refused(
        "a DPoP proof for another URL",
        token,
        with_proof(
            exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-dpop"),
            key.proof("POST", "https://tessera.test/oauth2/introspect", None),
        ),
        As::Orchestrator,
        400,
        "invalid_dpop_proof",
    )
    .await;
    t.refused(
        "a DPoP proof for another method",
        token,
        with_proof(exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-dpop"), key.proof("GET", TOKEN_HTU, None)),
        As::Orchestrator,
        400,
        "invalid_dpop_proof",
    )
    .await;
    let proof = key.proof("POST", TOKEN_HTU, None);
    let bound = t
        .issue(
            with_proof(exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-dpop"), proof.clone()),
            As::Orchestrator,
        )
        .await;
    t.refused(
        "a replayed DPoP proof",
        token,
        with_proof(exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-dpop"), proof),
        As::Orchestrator,
        400,
        "invalid_dpop_proof",
    )
    .await;
    t.refused(
        "a DPoP-bound token re-exchanged without a proof",
        token,
        exchange(&bound, CRM, "crm:read", ""),
        As::Orchestrator,
        400,
        "invalid_dpop_proof",
    )
    .await;
    t.refused(
        "a DPoP-bound token re-exchanged with another key's proof",
        token,
        with_proof(exchange(&bound, CRM, "crm:read", ""), crate::dpop::DpopKey::ec().proof("POST", TOKEN_HTU, None)),
        As::Orchestrator,
        400,
        "invalid_dpop_proof",
    )
    .await;

    // Revocations reach every derived token.
    let root = t.issue(exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-anc"), As::Orchestrator).await;
    let child = t.issue(exchange(&root, BROKER, "crm:read", ""), As::Orchestrator).await;
    t.ok("/oauth2/revoke", vec![("token", root.clone())], As::Operator).await;
    t.refused("revoked ancestor", token, exchange(&child, CRM, "crm:read", ""), As::Orchestrator, 400, "invalid_grant")
        .await;
    let in_task =
        t.issue(exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-revoked-task"), As::Orchestrator).await;
    t.ok("/oauth2/revoke", vec![("task_id", "atk-revoked-task".into())], As::Operator).await;
    t.refused("revoked task", token, exchange(&in_task, CRM, "crm:read", ""), As::Orchestrator, 400, "invalid_grant")
        .await;
    t.refused(
        "a new assertion into a revoked task",
        token,
        exchange(&k8s_assertion(600), CRM, "crm:read", "atk-revoked-task"),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    let earlier = k8s_for(VICTIM, |c| c["iat"] = (now() - 5).into());
    t.ok("/oauth2/revoke", vec![("subject", VICTIM.into()), ("issuer", K8S_ISS.into())], As::Operator).await;
    t.refused(
        "revoked subject",
        token,
        exchange(&earlier, CRM, "crm:read", "atk"),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    let revoked_actor = "spiffe://agents.example.org/ns/agents/sa/revoked";
    let actor_task = t
        .issue(
            with_actor(exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-actor"), &svid(revoked_actor)),
            As::Orchestrator,
        )
        .await;
    t.ok(
        "/oauth2/revoke",
        vec![("subject", revoked_actor.into()), ("issuer", "spiffe://agents.example.org".into())],
        As::Operator,
    )
    .await;
    t.refused(
        "a token whose actor was revoked",
        token,
        exchange(&actor_task, CRM, "crm:read", ""),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    let seconds = t.issue(exchange(&k8s_assertion(600), BROKER, "crm:read", "atk-client"), As::Second).await;
    t.ok("/oauth2/revoke", vec![("target_client_id", "second".into())], As::Operator).await;
    t.refused(
        "a token of a revoked client",
        token,
        exchange(&seconds, CRM, "crm:read", ""),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;

    // The kill switch: a suspended agent gets nothing, as subject, as actor, or as the calling client.
    t.ok("/oauth2/suspend", vec![("subject", SUSPECT.into()), ("issuer", K8S_ISS.into())], As::Operator).await;
    t.refused(
        "suspended agent as subject",
        token,
        exchange(&k8s_for(SUSPECT, |_| {}), CRM, "crm:read", "atk"),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    let suspended_actor = "spiffe://agents.example.org/ns/agents/sa/suspended";
    t.ok(
        "/oauth2/suspend",
        vec![("subject", suspended_actor.into()), ("issuer", "spiffe://agents.example.org".into())],
        As::Operator,
    )
    .await;
    t.refused(
        "suspended agent as actor",
        token,
        with_actor(exchange(&k8s_assertion(600), CRM, "crm:read", "atk"), &svid(suspended_actor)),
        As::Orchestrator,
        400,
        "invalid_grant",
    )
    .await;
    t.ok("/oauth2/suspend", vec![("target_client_id", "third".into())], As::Operator).await;
    t.refused(
        "suspended client",
        token,
        exchange(&k8s_assertion(600), CRM, "crm:read", "atk"),
        As::Third,
        400,
        "unauthorized_client",
    )
    .await;

    // Callers: who may do what.
    let payment = t.issue(exchange(&k8s_assertion(600), PAYMENTS, "pay:read", "atk-pay"), As::Orchestrator).await;
    t.inactive("another client introspecting (token scanning)", &payment, As::Auditor).await;
    for (name, path, form) in [
        ("unauthenticated revoke", "/oauth2/revoke", vec![("task_id", "atk".to_string())]),
        ("unauthenticated suspend", "/oauth2/suspend", vec![("target_client_id", "orchestrator".to_string())]),
        ("unauthenticated introspection", "/oauth2/introspect", vec![("token", payment.clone())]),
        ("unauthenticated exchange", token, exchange(&k8s_assertion(600), CRM, "crm:read", "atk")),
    ] {
        t.refused(name, path, form, As::Nobody, 401, "invalid_client").await;
    }
    t.refused(
        "revoke by a client that may only exchange",
        "/oauth2/revoke",
        vec![("task_id", "atk".into())],
        As::Orchestrator,
        400,
        "unauthorized_client",
    )
    .await;
    t.refused(
        "suspend by a gateway",
        "/oauth2/suspend",
        vec![("target_client_id", "orchestrator".into())],
        As::Gateway,
        400,
        "unauthorized_client",
    )
    .await;
    t.refused(
        "exchange by an introspection client",
        token,
        exchange(&k8s_assertion(600), CRM, "crm:read", "atk"),
        As::Gateway,
        400,
        "unauthorized_client",
    )
    .await;
    let mut wrong_secret = exchange(&k8s_assertion(600), CRM, "crm:read", "atk");
    wrong_secret.extend([("client_id", "orchestrator".into()), ("client_secret", "guess".into())]);
    t.refused("a wrong client secret", token, wrong_secret, As::Nobody, 401, "invalid_client").await;
    let mut two_methods = exchange(&k8s_assertion(600), CRM, "crm:read", "atk");
    two_methods.extend([("client_id", "orchestrator".into()), ("client_secret", CLIENT_SECRET.into())]);
    t.refused("two client authentication methods", token, two_methods, As::Orchestrator, 400, "invalid_request").await;
    t.refused(
        "an unsupported grant type",
        token,
        vec![("grant_type", "client_credentials".into()), ("scope", "crm:read".into())],
        As::Orchestrator,
        400,
        "unsupported_grant_type",
    )
    .await;

    assert!(t.names.len() >= 40, "the attack table has {} cases", t.names.len());
    // The setups' own exchanges were counted: the counter the attacks are checked against is live.
    let granted = t.granted().await;
    assert!(granted >= 10.0, "granted exchanges counted: {granted}");
    // Nothing that should not be there reached either replica's (debug) log: no token, assertion or proof
    // (every JWS here starts `eyJ`), no client secret, and no raw control character from a hostile claim.
    for replica in &t.replicas {
        let logs = replica.logs();
        assert!(logs.contains("exchange"), "the replica logged its decisions");
        for (what, leaked) in [("a JWS", logs.contains("eyJ")), ("the client secret", logs.contains(CLIENT_SECRET))] {
            assert!(!leaked, "{what} reached a log:\n{logs}");
        }
        assert!(!logs.contains('\u{7}'), "a raw control character reached a log");
    }
}
