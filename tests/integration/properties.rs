//! Property tests: random chains of exchanges never widen scope, audience or lifetime, never lose an actor
//! or an ancestor, and refuse exactly the requests that would; RFC 9396 `authorization_details` only narrow
//! along random chains, and arbitrary ones are refused or accepted cleanly; and no DPoP proof an attacker
//! makes passes.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tessera::ErrorCode;
use tessera::exchange::ExchangeRequest;
use tessera::secret::Secret;
use tessera::token::AccessClaims;

use crate::support::*;

const SCOPES: [&str; 4] = ["crm:read", "crm:write", "crm:export", "other:read"];
const TARGETS: [&str; 4] = [CRM, OTHER, BROKER, "https://unknown.example"];

#[derive(Clone, Debug)]
struct Step {
    target: usize,
    scopes: Vec<usize>,
    actor: Option<usize>,
    requested_ttl: u32,
    advance: u64,
}

fn step() -> impl Strategy<Value = Step> {
    (0..4usize, proptest::collection::vec(0..4usize, 0..4), proptest::option::of(0..4usize), 0..400u32, 0..20u64)
        .prop_map(|(target, scopes, actor, requested_ttl, advance)| Step {
            target,
            scopes,
            actor,
            requested_ttl,
            advance,
        })
}

fn catalog_scopes(target: &str) -> BTreeSet<&'static str> {
    match target {
        CRM => ["crm:read", "crm:write", "crm:export"].into(),
        OTHER => ["other:read"].into(),
        BROKER => SCOPES.into(),
        _ => BTreeSet::new(),
    }
}

fn max_ttl(target: &str) -> u64 {
    match target {
        CRM => 300,
        OTHER => 120,
        _ => 1800,
    }
}

fn actor_token(i: usize) -> (String, &'static str) {
    match i {
        0 => (spiffe_assertion(3600), SPIFFE_AGENT),
        1 => (github_assertion(3600), "repo:octo-org/agent-fleet:ref:refs/heads/main"),
        2 => (k8s_assertion(3600), ORCHESTRATOR),
        _ => {
            let mut c = claims("kubernetes", 3600);
            c["sub"] = "system:serviceaccount:agents:summariser".into();
            (
                Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &c),
                "system:serviceaccount:agents:summariser",
            )
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn chains_of_exchanges_only_narrow(first_ttl in 60..4000u64, steps in proptest::collection::vec(step(), 1..7)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let builder = TestBroker::builder().broker_toml("max_delegation_depth = 3\nmax_chain_length = 5");
        let (broker, _, _dir) = runtime.block_on(builder.build());
        let client = local_client(&broker);
        let upstream = k8s_assertion(first_ttl);
        let upstream_exp = claims("kubernetes", first_ttl)["exp"].as_u64().unwrap();
        let mut now = now();
        // The current subject: (token, its claims if it is a tessera token).
        let mut subject: (String, Option<AccessClaims>) = (upstream, None);

        for step in steps {
            now += step.advance;
            let target = TARGETS[step.target];
            let scopes: Vec<&str> = step.scopes.iter().map(|i| SCOPES[*i]).collect();
            let actor = step.actor.map(actor_token);
            let request = ExchangeRequest {
                grant_type: TOKEN_EXCHANGE.into(),
                audience: vec![target.into()],
                scope: scopes.join(" "),
                subject_token: Secret::new(subject.0.clone()),
                subject_token_type: if subject.1.is_some() { ACCESS_TOKEN.into() } else { JWT.into() },
                actor_token: Secret::new(actor.as_ref().map(|a| a.0.clone()).unwrap_or_default()),
                actor_token_type: if actor.is_some() { JWT.into() } else { String::new() },
                task_id: "task-p".into(),
                requested_expires_in: step.requested_ttl,
                ..Default::default()
            };
            let outcome = runtime.block_on(broker.exchange(&client, request, now));
            let parent = subject.1.as_ref();

            // What the invariants allow, computed independently of the broker.
            let held: Option<BTreeSet<&str>> = parent.map(|p| p.scopes().collect());
            let catalogued = catalog_scopes(target);
            let within = !scopes.is_empty()
                && scopes.iter().all(|s| catalogued.contains(s) && held.as_ref().is_none_or(|h| h.contains(s)));
            let hop = parent.is_some_and(|p| p.aud != BROKER && p.aud != target);
            let depth = parent.map_or(0, AccessClaims::depth) + usize::from(actor.is_some());
            let chain = parent.map_or(0, |p| p.anc.len() + 1);

            match outcome {
                Ok(issued) => {
                    let c = decode(issued.access_token.expose());
                    prop_assert_eq!(&c, &issued.claims);
                    prop_assert!(within, "granted {:?} outside what the invariants allow", scopes);
                    prop_assert!(!hop && !catalogued.is_empty());
                    prop_assert!(depth <= 3 && chain <= 5);
                    // Scope: a subset of the request, of the parent, of the catalog; never crm:export (policy).
                    for s in c.scopes() {
                        prop_assert!(scopes.contains(&s) && catalogued.contains(s) && s != "crm:export");
                        prop_assert!(held.as_ref().is_none_or(|h| h.contains(s)));
                    }
                    // Audience: exactly the one asked for; a downstream parent's audience is kept.
                    prop_assert_eq!(c.aud.as_str(), target);
                    // Lifetime: never past the parent, the upstream assertion, the audience max, the request.
                    prop_assert!(c.exp > now && c.exp <= upstream_exp);
                    prop_assert!(c.exp <= now + max_ttl(target));
                    if step.requested_ttl > 0 { prop_assert!(c.exp <= now + u64::from(step.requested_ttl)); }
                    if let Some(p) = parent {
                        prop_assert!(c.exp <= p.exp);
                        let mut anc = p.anc.clone();
                        anc.push(p.jti.clone());
                        prop_assert_eq!(&c.anc, &anc);
                        prop_assert_eq!(&c.task_id, &p.task_id);
                        prop_assert_eq!(&c.sub, &p.sub);
                    }
                    // Delegation: the new actor on top, the parent's chain nested under it, unchanged.
                    prop_assert_eq!(c.depth(), depth);
                    match (&actor, &c.act) {
                        (Some((_, sub)), Some(act)) => {
                            prop_assert_eq!(&act.sub, sub);
                            prop_assert_eq!(act.act.as_deref(), parent.and_then(|p| p.act.as_ref()));
                        }
                        (None, act) => prop_assert_eq!(act.as_ref(), parent.and_then(|p| p.act.as_ref())),
                        (Some(_), None) => prop_assert!(false, "actor missing from act"),
                    }
                    subject = (issued.access_token.expose().to_string(), Some(c));
                }
                Err(e) => {
                    // The subject acting for itself (the orchestrator's own assertion as the actor) is refused.
                    let self_acting = actor.as_ref().is_some_and(|(_, sub)| *sub == ORCHESTRATOR);
                    prop_assert!(
                        matches!(e.code, ErrorCode::InvalidScope | ErrorCode::InvalidTarget | ErrorCode::InvalidGrant)
                            || (self_acting && e.code == ErrorCode::InvalidRequest),
                        "unexpected refusal {:?}", e
                    );
                    // A refusal is explained by an invariant, the policy, or the subject's lifetime.
                    // (The test policy grants upstream principals nothing on the other API, and nobody crm:export.)
                    let policy_refuses_all = (parent.is_none() && target == OTHER)
                        || (!scopes.is_empty() && scopes.iter().all(|s| *s == "crm:export"));
                    let expired = parent.map_or(upstream_exp, |p| p.exp) <= now;
                    prop_assert!(
                        !within || hop || catalogued.is_empty() || depth > 3 || chain > 5 || policy_refuses_all || expired
                            || self_acting,
                        "refused a request the invariants allow: {:?} {:?}", scopes, e
                    );
                }
            }
        }
    }
}

/// Cases per property: bounded for CI; `TESSERA_FUZZ_CASES` for a longer fuzzing run.
fn fuzz_cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// A claim value of any JSON type, as a forged assertion might carry it.
fn any_claim() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        proptest::collection::vec(".{0,12}", 0..3).prop_map(serde_json::Value::from),
        Just(serde_json::json!({ "sub": "x" })),
    ]
}

proptest! {
    #![proptest_config(fuzz_cases(64))]

    /// Assertions with every registered claim mutated to any type, signed by the issuer's real key with a
    /// random header, or carrying random signature bytes: the verifier never panics, refuses each with
    /// `invalid_grant` unless it is genuinely valid, and never issues a token whose subject was not in the
    /// assertion.
    #[test]
    fn the_verifier_refuses_hostile_assertions(
        mutations in proptest::collection::vec((0..7usize, any_claim()), 0..4),
        kid in proptest::option::of(".{0,20}"),
        forged_signature in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
    ) {
        const CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "may_act"];
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (broker, _, _dir) = runtime.block_on(TestBroker::builder().build());
        let client = local_client(&broker);
        let mut c = claims("kubernetes", 600);
        for (claim, value) in &mutations {
            c[CLAIMS[*claim]] = value.clone();
        }
        let kid = kid.unwrap_or_else(|| crate::support::kid("kubernetes.jwks.json"));
        let signed = Signer::rs256("kubernetes.key.pem").token(&kid, &c);
        let token = match &forged_signature {
            Some(sig) => format!("{}.{}", signed.rsplit_once('.').unwrap().0, b64(sig)),
            None => signed,
        };
        let request = ExchangeRequest {
            grant_type: TOKEN_EXCHANGE.into(),
            audience: vec![CRM.into()],
            scope: "crm:read".into(),
            subject_token: Secret::new(token),
            subject_token_type: JWT.into(),
            task_id: "task-fuzz".into(),
            ..Default::default()
        };
        match runtime.block_on(broker.exchange(&client, request, now())) {
            Ok(issued) => {
                // Only an assertion that is still valid as a whole may pass: real signature, a usable subject.
                prop_assert!(forged_signature.is_none());
                let minted = decode(issued.access_token.expose());
                prop_assert_eq!(Some(minted.sub.as_str()), c["sub"].as_str());
            }
            Err(e) => prop_assert!(
                matches!(e.code, ErrorCode::InvalidGrant | ErrorCode::InvalidRequest),
                "{:?}", e
            ),
        }
    }
}

/// Whatever an attacker sends as a DPoP proof with an otherwise good exchange — arbitrary text, arbitrary
/// bytes in a JWS's parts, a JWS with a well-formed DPoP header and claims but no valid signature — the broker
/// refuses it with `invalid_dpop_proof` and issues nothing; it never panics or answers anything else.
#[test]
fn arbitrary_dpop_proofs_at_the_token_endpoint_are_refused() {
    use proptest::test_runner::TestRunner;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (broker, _, _dir) = runtime.block_on(TestBroker::builder().build());
    let client = local_client(&broker);
    let htu = format!("{BROKER}/oauth2/token");
    let strategy = (
        ".{0,300}",
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..300),
        "(ES256|EdDSA|RS256|none|HS256)",
        "[A-Za-z0-9_-]{0,90}",
        any::<i64>(),
        0..3usize,
    );
    let mut runner = TestRunner::new(fuzz_cases(64));
    runner
        .run(&strategy, |(text, header, payload, alg, member, iat, shape)| {
            let proof = match shape {
                0 => text,
                1 => format!("{}.{}.{}", b64(&header), b64(&payload), b64(member.as_bytes())),
                _ => {
                    let h = serde_json::json!({ "typ": "dpop+jwt", "alg": alg, "jwk": { "kty": "EC", "crv": "P-256", "x": member, "y": member } });
                    let c = serde_json::json!({ "htm": "POST", "htu": htu, "iat": iat, "jti": member });
                    format!("{}.{}.{}", b64(h.to_string().as_bytes()), b64(c.to_string().as_bytes()), b64(&payload))
                }
            };
            let mut request = ExchangeRequest {
                grant_type: TOKEN_EXCHANGE.into(),
                audience: vec![CRM.into()],
                scope: "crm:read".into(),
                subject_token: Secret::new(k8s_assertion(600)),
                subject_token_type: JWT.into(),
                task_id: "task-dpop-p".into(),
                ..Default::default()
            };
            request.dpop =
                Some(tessera::dpop::Presented { proof: Secret::new(proof), htm: "POST".into(), htu: htu.clone() });
            let outcome = runtime.block_on(broker.exchange(&client, request, now()));
            prop_assert_eq!(outcome.map(|_| ()).map_err(|e| e.code), Err(ErrorCode::InvalidDpopProof));
            Ok(())
        })
        .unwrap();
}

/// One `authorization_details` entry the chains below may ask for: a `crm_case` (actions ⊆ {read, write},
/// one of two cases), a `payment` (an amount, a currency), or one the CRM's schema refuses.
fn detail_entry() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        4 => (proptest::sample::subsequence(vec!["read", "write"], 1..=2), 0..2usize)
            .prop_map(|(actions, id)| json!({"type": "crm_case", "actions": actions, "identifier": (["1234", "5678"][id])})),
        3 => (0..3usize, 0..2usize)
            .prop_map(|(a, c)| json!({"type": "payment", "amount": ([10, 50, 100][a]), "currency": (["EUR", "USD"][c])})),
        1 => Just(json!({"type": "crm_case", "actions": ["delete"], "identifier": "1234"})),
        1 => Just(json!({"type": "unknown"})),
    ]
}

/// Whether `entry` satisfies the CRM's schemas (crate::rar::CRM_DETAILS), computed independently.
fn schema_ok(entry: &serde_json::Value) -> bool {
    match entry["type"].as_str() {
        Some("crm_case") => entry["actions"].as_array().is_some_and(|a| a.iter().all(|x| x == "read" || x == "write")),
        Some("payment") => true,
        _ => false,
    }
}

/// Whether `child` is `parent` or narrower: the model of docs/rar.md, independent of the broker's code.
fn entry_narrows(child: &serde_json::Value, parent: &serde_json::Value) -> bool {
    let set = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect()
    };
    match (child["type"].as_str(), parent["type"].as_str()) {
        (Some("crm_case"), Some("crm_case")) => {
            child["identifier"] == parent["identifier"] && set(&child["actions"]).is_subset(&set(&parent["actions"]))
        }
        (Some("payment"), Some("payment")) => {
            child["currency"] == parent["currency"] && child["amount"].as_f64() <= parent["amount"].as_f64()
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(fuzz_cases(24))]

    /// Random chains of re-exchanges with random `authorization_details` (omitted, narrower, wider, of another
    /// case, of an unknown type, malformed): a hop is granted exactly when every entry satisfies its schema and
    /// narrows some entry of the subject token's details, an omitted one keeps them, and a refusal is always
    /// `invalid_authorization_details` with nothing issued.
    #[test]
    fn chains_of_authorization_details_only_narrow(
        steps in proptest::collection::vec(proptest::option::of(proptest::collection::vec(detail_entry(), 0..3)), 1..6),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let builder = TestBroker::builder().crm_toml(crate::rar::CRM_DETAILS);
        let (broker, _, _dir) = runtime.block_on(builder.build());
        let client = local_client(&broker);
        let mut subject: (String, Option<AccessClaims>) = (k8s_assertion(600), None);
        for asked in steps {
            let request = ExchangeRequest {
                grant_type: TOKEN_EXCHANGE.into(),
                audience: vec![CRM.into()],
                scope: "crm:read".into(),
                subject_token: Secret::new(subject.0.clone()),
                subject_token_type: if subject.1.is_some() { ACCESS_TOKEN.into() } else { JWT.into() },
                task_id: "task-rar".into(),
                authorization_details: asked.as_ref().map(|a| serde_json::Value::from(a.clone()).to_string()).unwrap_or_default(),
                ..Default::default()
            };
            let outcome = runtime.block_on(broker.exchange(&client, request, now()));
            let parent: Option<Vec<serde_json::Value>> = subject
                .1
                .as_ref()
                .and_then(|p| p.authorization_details.as_ref())
                .map(|d| serde_json::to_value(d).unwrap().as_array().unwrap().clone());
            let expected: Option<Option<Vec<serde_json::Value>>> = match &asked {
                None => Some(parent.clone()),
                Some(entries) => {
                    let ok = entries.iter().all(|e| {
                        schema_ok(e) && parent.as_ref().is_none_or(|p| p.iter().any(|pe| entry_narrows(e, pe)))
                    });
                    ok.then(|| Some(entries.clone()))
                }
            };
            match (outcome, expected) {
                (Ok(issued), Some(details)) => {
                    let c = decode(issued.access_token.expose());
                    let got = c.authorization_details.as_ref().map(|d| serde_json::to_value(d).unwrap().as_array().unwrap().clone());
                    prop_assert_eq!(&got, &details);
                    subject = (issued.access_token.expose().to_string(), Some(c));
                }
                (Err(e), None) => prop_assert_eq!(e.code, ErrorCode::InvalidAuthorizationDetails, "{:?}", e),
                (outcome, expected) => prop_assert!(false, "asked {:?} under {:?}: got {:?}, expected {:?}",
                    asked, parent, outcome.map(|i| i.claims.authorization_details), expected),
            }
        }
    }

    /// Arbitrary `authorization_details` text — random strings, and JSON arrays of random values and objects —
    /// never panics the broker: each is granted (and then the token carries exactly what was parsed) or
    /// refused with `invalid_authorization_details`.
    #[test]
    fn arbitrary_authorization_details_are_refused_or_accepted_cleanly(
        text in prop_oneof![
            ".{0,200}",
            proptest::collection::vec(any_claim(), 0..4).prop_map(|v| serde_json::Value::from(v).to_string()),
            proptest::collection::vec((detail_entry(), any_claim(), "[a-z]{1,8}"), 0..4).prop_map(|v| {
                serde_json::Value::from(v.into_iter().map(|(mut e, x, k)| { e[k] = x; e }).collect::<Vec<_>>()).to_string()
            }),
        ],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (broker, _, _dir) = runtime.block_on(TestBroker::builder().crm_toml(crate::rar::CRM_DETAILS).build());
        let client = local_client(&broker);
        let request = ExchangeRequest {
            grant_type: TOKEN_EXCHANGE.into(),
            audience: vec![CRM.into()],
            scope: "crm:read".into(),
            subject_token: Secret::new(k8s_assertion(600)),
            subject_token_type: JWT.into(),
            task_id: "task-rar-fuzz".into(),
            authorization_details: text.clone(),
            ..Default::default()
        };
        match runtime.block_on(broker.exchange(&client, request, now())) {
            Ok(issued) if text.is_empty() => prop_assert!(issued.claims.authorization_details.is_none()),
            Ok(issued) => {
                let sent: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(serde_json::to_value(&issued.claims.authorization_details).unwrap(), sent);
            }
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidAuthorizationDetails, "{:?}", e),
        }
    }
}
