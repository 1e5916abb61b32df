//! The example policies of `examples/policies/`, each run end to end through ExchangeToken with realistic
//! Kubernetes, SPIFFE and GitHub Actions assertions, allowed and denied; strict audiences; a policy with a
//! type error refused at load while a running broker keeps serving; `tessera policy check` naming the deciding
//! policy for an allow and a deny; and the audit event carrying the same policy ids.

use serde_json::{Value, json};
use tessera::grpc::pb;
use tonic::Code;

use crate::support::process::{Serving, tessera};
use crate::support::*;

const CASES: &str = "https://cases.example";
const DEPLOY_FLEET: &str = "https://deploy.example/agent-fleet";
const DEPLOY_BILLING: &str = "https://deploy.example/billing";
const TICKETS: &str = "https://tickets.example";
const TICKETS_STRICT: &str = "https://tickets-strict.example";
const PAYROLL: &str = "https://payroll.example";

/// The catalog entries the examples expect, next to the suite's CRM and other API.
const AUDIENCES: &str = r#"
[[audiences]]
id = "https://cases.example"
scopes = ["case:read", "case:write"]
max_ttl = 3600

[[audiences]]
id = "https://deploy.example/agent-fleet"
scopes = ["deploy:write"]
max_ttl = 600
labels = { repositories = "octo-org/agent-fleet" }

[[audiences]]
id = "https://deploy.example/billing"
scopes = ["deploy:write"]
max_ttl = 600
labels = { repositories = "octo-org/billing" }

[[audiences]]
id = "https://tickets.example"
scopes = ["tickets:read", "tickets:comment"]
labels = { namespaces = ["agents", "support"] }

[[audiences]]
id = "https://tickets-strict.example"
scopes = ["tickets:read", "tickets:comment"]
labels = { namespaces = ["agents", "support"] }
grant = "strict"

[[audiences]]
id = "https://payroll.example"
scopes = ["payroll:read"]
labels = { namespaces = "finance" }
"#;

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The suite's issuers, GitHub mapping the claims the CI example reads (as docs/policy.md shows).
fn issuers() -> String {
    default_issuers_toml().replace(
        r#"attributes = { repository = "/repository", ref = "/ref", environment = "/environment" }"#,
        r#"attributes = { repository = "/repository", ref = "/ref", ref_type = "/ref_type", workflow = "/workflow", environment = "/environment" }"#,
    )
}

async fn broker_with(policy_file: &str) -> TestBroker {
    TestBroker::builder().policy(&example(policy_file)).issuers_toml(&issuers()).extra_toml(AUDIENCES).start().await
}

/// A projected service-account token of `namespace`/`service_account`, as the API server issues it.
fn k8s_sa(namespace: &str, service_account: &str) -> String {
    let mut c = claims("kubernetes", 600);
    c["sub"] = format!("system:serviceaccount:{namespace}:{service_account}").into();
    c["kubernetes.io"]["namespace"] = namespace.into();
    c["kubernetes.io"]["serviceaccount"]["name"] = service_account.into();
    c["kubernetes.io"]["pod"]["name"] = format!("{service_account}-6f7d9c-abcde").into();
    Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &c)
}

/// A JWT-SVID for `spiffe_id`.
fn svid(spiffe_id: &str) -> String {
    let mut c = claims("spiffe", 600);
    c["sub"] = spiffe_id.into();
    Signer::es256("spiffe.key.pem").token(&kid("spiffe.jwks.json"), &c)
}

/// A GitHub Actions OIDC token of `repository` at `git_ref`, its claims consistent with each other.
fn github(repository: &str, git_ref: &str) -> String {
    let mut c = claims("github", 600);
    let (owner, _) = repository.split_once('/').unwrap();
    c["repository"] = repository.into();
    c["repository_owner"] = owner.into();
    c["ref"] = git_ref.into();
    c["ref_type"] = if git_ref.starts_with("refs/heads/") { "branch" } else { "tag" }.into();
    c["sub"] = format!("repo:{repository}:ref:{git_ref}").into();
    c["workflow_ref"] = format!("{repository}/.github/workflows/deploy.yml@{git_ref}").into();
    c["workflow"] = "deploy".into();
    let header = json!({ "typ": "JWT", "kid": kid("github.jwks.json"), "x5t": "deEQaEGlnZVRyuXbOhW3h7skcA3" });
    Signer::rs256("github.key.pem").token_with_header(header, &c)
}

/// A request; a tessera subject token keeps its own task, and an actor token is sent with its type.
fn ask(subject: &str, audience: &str, scope: &str, actor: Option<&str>) -> pb::ExchangeTokenRequest {
    let mut r = request(subject, audience, scope);
    if is_tessera(subject) {
        r.subject_token_type = ACCESS_TOKEN.into();
        r.task_id.clear();
    }
    if let Some(actor) = actor {
        r.actor_token = actor.into();
        r.actor_token_type = JWT.into();
    }
    r
}

fn is_tessera(token: &str) -> bool {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: Option<Value> = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    claims.is_some_and(|c| c["iss"] == BROKER)
}

/// The granted token and its `scope`.
async fn granted(broker: &TestBroker, r: pb::ExchangeTokenRequest) -> (String, String) {
    let what = format!("{} {:?}", r.scope, r.audience);
    match broker.client().await.exchange_token(r).await {
        Ok(r) => {
            let r = r.into_inner();
            (r.access_token, r.scope)
        }
        Err(status) => panic!("{what}: expected a grant, got {:?}: {}", status.code(), status.message()),
    }
}

/// Refused with `invalid_scope` (PERMISSION_DENIED), nothing issued; returns the message.
async fn refused(broker: &TestBroker, r: pb::ExchangeTokenRequest) -> String {
    let token = r.subject_token.clone();
    let result = broker.client().await.exchange_token(r).await;
    assert_refused(result, Code::PermissionDenied, "invalid_scope", &token).message().to_string()
}

#[tokio::test]
async fn a_support_agent_reads_one_crm_case_for_five_minutes() {
    let broker = broker_with("support-case.cedar").await;
    let agent = k8s_sa("support", "support-agent");
    let case = |task: &str, scope: &str, ttl: u32| {
        let mut r = ask(&agent, CASES, scope, None);
        r.task_id = task.into();
        r.requested_expires_in = ttl;
        r
    };
    let (token, scope) = granted(&broker, case("case:1234", "case:read", 300)).await;
    assert_eq!(scope, "case:read");
    let claims = decode(&token);
    assert_eq!((claims.task_id.as_str(), claims.aud.as_str()), ("case:1234", CASES), "bound to the one case");
    assert_eq!(claims.exp - claims.iat, 300, "five minutes");
    assert_eq!(claims.sub, "system:serviceaccount:support:support-agent");

    // Writing is not in the rule: a partial grant says so in `scope`.
    let (_, scope) = granted(&broker, case("case:1234", "case:read case:write", 120)).await;
    assert_eq!(scope, "case:read");
    // Longer than five minutes, or "as long as allowed" (the audience allows an hour): refused.
    refused(&broker, case("case:1234", "case:read", 301)).await;
    refused(&broker, case("case:1234", "case:read", 0)).await;
    // Not bound to a case: refused.
    refused(&broker, case("sweep-all-cases", "case:read", 300)).await;
    // Another workload of the cluster, another namespace or service account: refused.
    for other in [k8s_sa("support", "batch-export"), k8s_sa("agents", "support-agent"), k8s_assertion(600)] {
        let mut r = ask(&other, CASES, "case:read", None);
        r.task_id = "case:1234".into();
        r.requested_expires_in = 300;
        refused(&broker, r).await;
    }
    // The case token is not handed on, even to a workload the rule would let read.
    let helper = k8s_sa("support", "support-agent-helper");
    let mut r = ask(&token, CASES, "case:read", Some(&helper));
    r.requested_expires_in = 60;
    refused(&broker, r).await;
}

#[tokio::test]
async fn a_ci_runner_gets_a_deploy_token_only_for_its_own_repository_main_branch() {
    let broker = broker_with("ci-deploy.cedar").await;
    let fleet_main = github("octo-org/agent-fleet", "refs/heads/main");
    let (token, scope) = granted(&broker, ask(&fleet_main, DEPLOY_FLEET, "deploy:write", None)).await;
    assert_eq!(scope, "deploy:write");
    assert_eq!(decode(&token).sub, "repo:octo-org/agent-fleet:ref:refs/heads/main");
    // Its own repository only: another repository's deployment target is refused.
    refused(&broker, ask(&fleet_main, DEPLOY_BILLING, "deploy:write", None)).await;
    // The main branch only: a feature branch, a pull request's merge ref or a tag named main are refused.
    for git_ref in ["refs/heads/feature-x", "refs/pull/7/merge", "refs/tags/main"] {
        refused(&broker, ask(&github("octo-org/agent-fleet", git_ref), DEPLOY_FLEET, "deploy:write", None)).await;
    }
    // The same rule serves the other repository through its own label: a catalog entry, not a new policy.
    let billing_main = github("octo-org/billing", "refs/heads/main");
    granted(&broker, ask(&billing_main, DEPLOY_BILLING, "deploy:write", None)).await;
    refused(&broker, ask(&billing_main, DEPLOY_FLEET, "deploy:write", None)).await;
    // A fork or look-alike organisation gets nothing.
    refused(&broker, ask(&github("evil-org/agent-fleet", "refs/heads/main"), DEPLOY_FLEET, "deploy:write", None)).await;
}

#[tokio::test]
async fn a_sub_agent_never_inherits_its_parents_permissions() {
    let broker = broker_with("handoff.cedar").await;
    // The orchestrator's ceiling for the task: read and write.
    let (task_token, scope) = granted(&broker, ask(&k8s_assertion(600), BROKER, "crm:read crm:write", None)).await;
    assert_eq!(scope, "crm:read crm:write");

    // Planning: the planner holds a token derived from a write-capable task token, and still only reads.
    let planner = k8s_sa("agents", "planner");
    let (planning, scope) = granted(&broker, ask(&task_token, CRM, "crm:read crm:write", Some(&planner))).await;
    assert_eq!(scope, "crm:read", "the planner is not granted the parent's crm:write");
    let act = decode(&planning).act.expect("act names the planner");
    assert_eq!(act.sub, "system:serviceaccount:agents:planner");

    // Execution: the executor is granted write, because a rule names it.
    let executor = k8s_sa("agents", "executor");
    let (_, scope) = granted(&broker, ask(&task_token, CRM, "crm:write", Some(&executor))).await;
    assert_eq!(scope, "crm:write");

    // Any other sub-agent, of the same namespace or of the mesh, gets nothing from the same task token.
    for other in [k8s_sa("agents", "summariser"), svid("spiffe://agents.example.org/ns/agents/sa/summariser")] {
        refused(&broker, ask(&task_token, CRM, "crm:read", Some(&other))).await;
    }
    // The planner handing its own token on to the executor does not add write: the planner's token holds
    // crm:read only (invariant 1), so asking for write is refused before policy.
    refused(&broker, ask(&planning, CRM, "crm:write", Some(&executor))).await;
    // The orchestrator narrowing its own task token (no new actor) is let through.
    let (_, scope) = granted(&broker, ask(&task_token, CRM, "crm:write", None)).await;
    assert_eq!(scope, "crm:write");
}

#[tokio::test]
async fn write_scopes_are_refused_past_two_hops() {
    let broker = broker_with("depth-limits.cedar").await;
    let (task_token, _) = granted(&broker, ask(&k8s_assertion(600), BROKER, "crm:read crm:write", None)).await;
    let mut token = task_token;
    for (hop, sa) in ["planner", "executor", "tool"].into_iter().enumerate() {
        let depth = hop + 1;
        let (next, scope) = granted(&broker, ask(&token, CRM, "crm:read crm:write", Some(&k8s_sa("agents", sa)))).await;
        assert_eq!(decode(&next).depth(), depth);
        if depth <= 2 {
            assert_eq!(scope, "crm:read crm:write", "depth {depth}: writes allowed");
        } else {
            assert_eq!(scope, "crm:read", "depth {depth}: the write scope is refused, reading goes on");
        }
        token = next;
    }
    // An actor that is no cluster or mesh workload breaks the chain: a GitHub job as the next actor.
    refused(&broker, ask(&token, CRM, "crm:read", Some(&github("octo-org/agent-fleet", "refs/heads/main")))).await;
}

#[tokio::test]
async fn a_kubernetes_namespace_reaches_only_the_audiences_labelled_for_it() {
    let broker = broker_with("namespace-labels.cedar").await;
    let agents = k8s_assertion(600);
    let (_, scope) = granted(&broker, ask(&agents, TICKETS, "tickets:read tickets:comment", None)).await;
    assert_eq!(scope, "tickets:read", "reads only");
    refused(&broker, ask(&agents, PAYROLL, "payroll:read", None)).await;
    // The CRM carries no label in the suite's catalog: no namespace reaches it.
    refused(&broker, ask(&agents, CRM, "crm:read", None)).await;

    let finance = k8s_sa("finance", "payroll-agent");
    granted(&broker, ask(&finance, PAYROLL, "payroll:read", None)).await;
    refused(&broker, ask(&finance, TICKETS, "tickets:read", None)).await;
    granted(&broker, ask(&k8s_sa("support", "triage"), TICKETS, "tickets:read", None)).await;

    // SPIFFE workloads by trust domain and path.
    granted(&broker, ask(&spiffe_assertion(600), TICKETS, "tickets:read", None)).await;
    refused(&broker, ask(&spiffe_assertion(600), PAYROLL, "payroll:read", None)).await;
    refused(&broker, ask(&svid("spiffe://agents.example.org/ns/finance/sa/ledger"), TICKETS, "tickets:read", None))
        .await;
}

#[tokio::test]
async fn a_strict_audience_refuses_the_whole_exchange_and_issues_nothing() {
    let broker = broker_with("namespace-labels.cedar").await;
    let agents = k8s_assertion(600);
    // Partial (the default): the allowed subset, and `scope` says so.
    let (_, scope) = granted(&broker, ask(&agents, TICKETS, "tickets:read tickets:comment", None)).await;
    assert_eq!(scope, "tickets:read");
    // Strict: one declined scope refuses everything.
    let message = refused(&broker, ask(&agents, TICKETS_STRICT, "tickets:read tickets:comment", None)).await;
    assert!(message.contains("tickets:comment") && message.contains("all requested scopes or none"), "{message}");
    // What policy allows in full is issued as usual.
    let (token, scope) = granted(&broker, ask(&agents, TICKETS_STRICT, "tickets:read", None)).await;
    assert_eq!((scope.as_str(), decode(&token).aud.as_str()), ("tickets:read", TICKETS_STRICT));
}

/// The config of `broker` with its policy file replaced by `policy`.
fn config_with_policy(dir: &std::path::Path, policy: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("policy.cedar"), policy).unwrap();
    dir.join("tessera.toml")
}

#[tokio::test]
async fn a_policy_with_a_type_error_is_refused_at_load_while_the_running_broker_keeps_serving() {
    let builder = TestBroker::builder().issuers_toml(&issuers()).extra_toml(AUDIENCES);
    let dir = builder.write_config();
    let config = dir.path().join("tessera.toml");
    let server = Serving::start(&["--config", config.to_str().unwrap()], |c| {
        c.env("TESSERA__LOG__LEVEL", "info");
    });

    // A type error: `requested_ttl` is a Long, compared with a String.
    let broken = format!(
        "{}\n@id(\"five-minutes\")\nforbid (principal, action, resource) when {{ context.requested_ttl > \"300\" }};\n",
        std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap()
    );
    let config = config_with_policy(dir.path(), &broken);
    for args in [vec!["config", "check", config.to_str().unwrap()], vec!["policy", "check", "policy.cedar"]] {
        let out = tessera().args(&args).current_dir(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepts a type error");
        assert!(stderr.contains("five-minutes") && stderr.contains("Long"), "{args:?}: {stderr}");
    }
    let refused = tessera().args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!refused.status.success(), "serve starts with a policy that does not validate");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("five-minutes"));

    // The broker that was already running keeps serving with the policy it loaded, and its audit event
    // names the policies that decided each scope.
    let mut client = pb::token_broker_client::TokenBrokerClient::connect(server.url()).await.unwrap();
    let r = client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read crm:export")).await.unwrap();
    assert_eq!(r.into_inner().scope, "crm:read");
    let denied = client.exchange_token(request(&k8s_assertion(600), CRM, "crm:export")).await;
    assert_eq!(oauth_error(&denied.unwrap_err()), "invalid_scope");
    drop(client);
    // Off the runtime's thread: the client's connection closes on it while the server drains.
    let (_, logs) = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    let audit = logs.lines().find(|l| l.contains("tessera::audit") && l.contains("event=exchange")).expect("audited");
    assert!(audit.contains(r#"policies="crm:read=allow:agents-crm crm:export=deny:never-export""#), "{audit}");
    let denial = logs.lines().find(|l| l.contains("tessera::audit") && l.contains("decision=denied")).expect("audited");
    assert!(denial.contains(r#"policies="crm:export=deny:never-export""#), "the refusal names its policy: {denial}");
}

#[tokio::test]
async fn policy_check_names_the_deciding_policy_for_an_allow_and_a_deny() {
    let dir = TestBroker::builder().issuers_toml(&issuers()).extra_toml(AUDIENCES).write_config();
    let config = dir.path().join("tessera.toml");
    let lines = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };

    // A principal stated directly, against the suite's policy file.
    let policy = fixtures().join("policy.cedar");
    let out = tessera()
        .args(["policy", "check"])
        .arg(&policy)
        .args(["--principal", &format!("kubernetes:{ORCHESTRATOR}"), "--attr", "namespace=agents"])
        .args(["--audience", CRM, "--scope", "crm:read crm:export crm:write"])
        .output()
        .unwrap();
    let shown = lines(out);
    for expected in [
        "crm:read allow permitted by agents-crm",
        "crm:export deny forbidden by never-export",
        "crm:write allow permitted by agents-crm",
    ] {
        assert!(shown.iter().any(|l| l == expected), "missing {expected:?} in {shown:#?}");
    }

    let handoff = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/handoff.cedar");
    // The planner as a stated actor of a re-exchange, with the config's issuers and catalog.
    let out = tessera()
        .args(["policy", "check"])
        .arg(&handoff)
        .args(["--principal", &format!("kubernetes:{ORCHESTRATOR}"), "--attr", "namespace=agents"])
        .args(["--actor", "kubernetes:system:serviceaccount:agents:planner", "--actor-attr", "namespace=agents"])
        .args(["--actor-attr", "service_account=planner", "--tessera-subject", "--config"])
        .arg(&config)
        .args(["--audience", CRM, "--scope", "crm:read crm:write"])
        .output()
        .unwrap();
    let shown = lines(out);
    for expected in ["crm:read allow permitted by planner-reads", "crm:write deny no policy permits it"] {
        assert!(shown.iter().any(|l| l == expected), "missing {expected:?} in {shown:#?}");
    }

    // A real assertion, verified by the config's issuers, against an audience's labels from its catalog.
    let labels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/namespace-labels.cedar");
    let assertion_file = dir.path().join("assertion.jwt");
    std::fs::write(&assertion_file, k8s_sa("finance", "payroll-agent")).unwrap();
    let out = tessera()
        .args(["policy", "check"])
        .arg(&labels)
        .args(["--config"])
        .arg(&config)
        .args(["--subject-token", "-", "--audience", TICKETS, "--scope", "tickets:read"])
        .stdin(std::fs::File::open(&assertion_file).unwrap())
        .output()
        .unwrap();
    let shown = lines(out);
    assert!(
        shown.iter().any(|l| l == "tickets:read deny forbidden by namespace-only-labelled-audiences"),
        "{shown:#?}"
    );
    assert!(
        shown.iter().any(|l| l.starts_with("subject: kubernetes system:serviceaccount:finance:payroll-agent")),
        "{shown:#?}"
    );
    let out = tessera()
        .args(["policy", "check"])
        .arg(&labels)
        .args(["--config"])
        .arg(&config)
        .args(["--subject-token", "-", "--audience", PAYROLL, "--scope", "payroll:read"])
        .stdin(std::fs::File::open(&assertion_file).unwrap())
        .output()
        .unwrap();
    let shown = lines(out);
    assert!(
        shown.iter().any(|l| l == "payroll:read allow permitted by namespace-reads-labelled-audiences"),
        "{shown:#?}"
    );

    // A token the config's issuers do not trust is refused, as the exchange would refuse it.
    let out = tessera()
        .args(["policy", "check", "--config"])
        .arg(&config)
        .args(["--subject-token", "not.a.jwt", "--audience", CRM, "--scope", "crm:read"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_grant"));
}
