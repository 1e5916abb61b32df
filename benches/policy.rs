//! `cargo bench --bench policy`: what a policy decision costs (docs/benchmarks.md, "Policy evaluation").
//!
//! Per `Policy::decide` call (entities and context built once, then one Cedar evaluation per scope), with:
//! the example set (`examples/policies/*.cedar`, loaded together); 1,000 grants as entity data read by one
//! generic rule (the recommended model: 1,000 deployment targets each labelled with its repository); and the
//! naive model, 1,000 per-grant policies, to show why not. No store, no signing: policy alone. Then, for scale,
//! whole in-process exchanges (dev config, memory store) in the same run: with the dev policy, and with the
//! example set plus one rule that grants the dev principal `crm:read`.

use std::time::Instant;

use tessera::policy::{Labels, Policy, Principal, Question, Target};
use tessera::scopes::Scopes;

fn examples() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/policies")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read_to_string(f).expect("policy file")).collect::<Vec<_>>().join("\n")
}

const GENERIC: &str = r#"
@id("ci-deploys-own-repository-from-main")
permit (principal, action == Tessera::Action::"exchange", resource)
when {
  principal.issuer == "github" &&
  principal.hasTag("repository") && resource.hasTag("repositories") &&
  resource.getTag("repositories").contains(principal.getTag("repository")) &&
  principal.hasTag("ref") && principal.getTag("ref") == "refs/heads/main" &&
  context.scope == "deploy:write"
};
"#;

fn naive(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "@id(\"deploy-repo-{i}\")\npermit (principal, action == Tessera::Action::\"exchange\", \
                 resource == Tessera::Audience::\"https://deploy.example/repo-{i}\")\nwhen {{ principal.issuer == \
                 \"github\" && principal.hasTag(\"repository\") && principal.getTag(\"repository\") == \
                 \"octo-org/repo-{i}\" && principal.hasTag(\"ref\") && principal.getTag(\"ref\") == \
                 \"refs/heads/main\" && context.scope == \"deploy:write\" }};\n"
            )
        })
        .collect()
}

fn k8s(namespace: &str, sa: &str) -> Principal {
    Principal {
        issuer: "kubernetes".into(),
        iss: "https://kubernetes.default.svc.cluster.local".into(),
        sub: format!("system:serviceaccount:{namespace}:{sa}"),
        attributes: [("namespace".to_string(), namespace.to_string()), ("service_account".to_string(), sa.into())]
            .into(),
        spiffe: None,
    }
}

fn github(repo: &str) -> Principal {
    Principal {
        issuer: "github".into(),
        iss: "https://token.actions.githubusercontent.com".into(),
        sub: format!("repo:{repo}:ref:refs/heads/main"),
        attributes: [("repository".to_string(), repo.to_string()), ("ref".to_string(), "refs/heads/main".into())]
            .into(),
        spiffe: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn question<'a>(
    principal: &'a Principal,
    actor: Option<&'a Principal>,
    id: &'a str,
    scopes: Vec<&'a str>,
    labels: &'a Labels,
    depth: usize,
    tessera: bool,
) -> Question<'a> {
    Question {
        principal,
        actor,
        audience: Target { id, scopes, max_ttl: 300, labels },
        task_id: "case:1234",
        purpose: Some("benchmark"),
        session_id: None,
        client_id: "agent-runtime",
        depth,
        chain: actor.into_iter().cloned().collect(),
        subject_is_tessera_token: tessera,
        task_token: false,
        requested_ttl: 300,
        now: 1_800_000_000,
        authorization_details: None,
    }
}

/// Runs `decide` `n` times after a warm-up; prints µs per call and per scope decided.
fn measure(name: &str, policy: &Policy, q: &Question<'_>, scopes: &Scopes, n: usize) {
    let count = scopes.iter().count();
    for _ in 0..n / 10 {
        std::hint::black_box(policy.decide(q, scopes).expect("decide"));
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        std::hint::black_box(policy.decide(q, scopes).expect("decide"));
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / n as f64;
    let p = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "| {name} | {} | {count} | {n} | {mean:.1} | {:.1} | {:.1} | {:.1} |",
        policy.ids().count(),
        p(0.5),
        p(0.99),
        mean / count as f64
    );
}

fn main() {
    let example_set = Policy::new(&examples()).expect("the examples validate together");
    let labels_for = |repos: &[&str]| -> Labels {
        [("repositories".to_string(), repos.iter().map(|r| r.to_string()).collect())].into()
    };
    let ns_labels: Labels = [("namespaces".to_string(), ["agents".to_string(), "support".to_string()].into())].into();
    let no_labels = Labels::new();
    println!("| policy set | policies | scopes | n | mean µs | p50 µs | p99 µs | µs per scope |");
    println!("|---|---|---|---|---|---|---|---|");

    let support = k8s("support", "support-agent");
    let read = Scopes::parse("case:read").expect("scope");
    let q = question(&support, None, "https://cases.example", vec!["case:read", "case:write"], &no_labels, 0, false);
    measure("examples: support case read (allow)", &example_set, &q, &read, 20_000);

    let empty = Policy::new("").expect("no policies");
    measure("no policies: building entities and context only", &empty, &q, &read, 20_000);

    let orchestrator = k8s("agents", "orchestrator");
    let planner = k8s("agents", "planner");
    let four = Scopes::parse("crm:read crm:write crm:export crm:delete").expect("scopes");
    let crm = vec!["crm:read", "crm:write", "crm:export", "crm:delete"];
    let q = question(&orchestrator, Some(&planner), "https://crm.example", crm.clone(), &ns_labels, 1, true);
    measure("examples: handoff, 4 scopes (1 allow)", &example_set, &q, &four, 20_000);
    let one = Scopes::parse("crm:read").expect("scope");
    measure("examples: handoff, 1 scope", &example_set, &q, &one, 20_000);

    let fleet = github("octo-org/repo-999");
    let deploy = Scopes::parse("deploy:write").expect("scope");
    let labels = labels_for(&["octo-org/repo-999"]);
    let q = question(&fleet, None, "https://deploy.example/repo-999", vec!["deploy:write"], &labels, 0, false);
    let generic = Policy::new(GENERIC).expect("generic rule");
    measure("1,000 grants as data (1 rule, target labelled)", &generic, &q, &deploy, 20_000);
    let many: Vec<String> = (0..1000).map(|i| format!("octo-org/repo-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let wide = labels_for(&many);
    let q_wide = question(&fleet, None, "https://deploy.example/repo-999", vec!["deploy:write"], &wide, 0, false);
    measure("1,000 grants as data (1 rule, one label of 1,000 values)", &generic, &q_wide, &deploy, 5_000);
    let naive_set = Policy::new(&naive(1000)).expect("naive set");
    measure("1,000 per-grant policies (naive)", &naive_set, &q, &deploy, 2_000);

    println!();
    println!("| whole exchange, in process (memory store) | n | mean µs | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(exchanges(None));
    let with_examples = format!(
        "{}\n@id(\"bench-dev-read\") permit (principal, action, resource) when {{ principal.issuer == \"dev\" && \
         context.scope == \"crm:read\" }};",
        examples()
    );
    runtime.block_on(exchanges(Some(&with_examples)));
}

async fn exchanges(policy: Option<&str>) {
    use tessera::client::{Credentials, Rpc};
    use tessera::exchange::{ExchangeRequest, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = tessera::dev::config(dir.path(), None, None, None).expect("dev config");
    if let Some(source) = policy {
        config.policy = Policy::new(source).expect("policy");
    }
    let broker = tessera::serve::broker(config, tessera::metrics::Metrics::global()).await.expect("broker");
    let credentials = Credentials { peer_is_loopback: true, ..Credentials::default() };
    let client = broker.current().clients().authenticate(&credentials, Rpc::Exchange).expect("demo client").clone();
    let n = 3000;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let now = tessera::clock::now();
        let assertion = tessera::dev::assertion(dir.path(), "bench-orchestrator", None, 600, now).expect("assertion");
        let request = ExchangeRequest {
            grant_type: GRANT_TYPE_TOKEN_EXCHANGE.into(),
            audience: vec![tessera::dev::DEMO_AUDIENCE.into()],
            scope: "crm:read".into(),
            subject_token: tessera::secret::Token::new(assertion),
            subject_token_type: TOKEN_TYPE_JWT.into(),
            task_id: "bench".into(),
            ..Default::default()
        };
        let start = Instant::now();
        broker.exchange(&client, request, now).await.expect("granted");
        if i >= n / 10 {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / n as f64;
    let p = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    let what = if policy.is_some() { "example set + 1 dev rule" } else { "dev policy (2 policies)" };
    println!("| {what} | {n} | {mean:.1} | {:.1} | {:.1} |", p(0.5), p(0.99));
}
