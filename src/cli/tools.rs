//! The tools: `keygen`, `config check`, `policy check`, `dev assertion` and `audit`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tessera::catalog::{Catalog, Destination, Grant};
use tessera::dev;
use tessera::exchange::{ExchangeRequest, Explained};
use tessera::policy::{DEFAULT_POLICY, Labels, Policy, Principal, Question, SpiffeId, Target};
use tessera::scopes::Scopes;
use tessera::secret::Token;
use tessera::token::keys::{SigningAlgorithm, SigningKey};

use super::Alg;
use super::serve::{Overrides, load_config};

/// Writes a new signing key to `out` (never overwriting a file, mode 0600) and prints its `kid`.
pub(super) fn keygen(alg: Alg, out: &Path) -> Result<ExitCode, String> {
    let alg = match alg {
        Alg::Eddsa => SigningAlgorithm::EdDSA,
        Alg::Es256 => SigningAlgorithm::ES256,
    };
    let (key, pem) = SigningKey::generate(alg)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::io::Write::write_all(&mut file, pem.expose().as_bytes()).map_err(|e| e.to_string())?;
    println!("{}", serde_json::json!({ "kid": key.kid(), "alg": key.alg().as_str(), "file": out }));
    Ok(ExitCode::SUCCESS)
}

/// Validates a config file as `serve` would, listing every problem.
pub(super) fn config_check(file: &Path) -> Result<ExitCode, String> {
    match load_config(file, Overrides::default()) {
        Ok(config) => {
            println!(
                "{}: ok ({} issuers, {} audiences, {} clients, {} signing keys)",
                file.display(),
                config.issuers.len(),
                config.audiences.len(),
                config.clients.len(),
                config.signing_keys.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// `tessera policy check`: validates a policy file, or explains what it decides for one exchange.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("subject").args(["subject_token", "principal"]))]
pub(crate) struct PolicyCheckArgs {
    /// The Cedar policy file [default with --config: the config's policy].
    file: Option<PathBuf>,
    /// The config whose issuers verify --subject-token/--actor-token and whose catalog describes --audience.
    #[arg(long, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    /// Decide for this subject token, verified by the config's issuers as an exchange would (`-`: stdin).
    #[arg(long, requires_all = ["config", "audience", "scope"])]
    subject_token: Option<String>,
    /// With --subject-token: the actor token (`-`: stdin).
    #[arg(long, requires = "subject_token")]
    actor_token: Option<String>,
    /// Decide for this principal, stated directly: ISSUER:SUB (ISSUER is the issuer's name in the config).
    #[arg(long, requires_all = ["audience", "scope"])]
    principal: Option<String>,
    /// With --principal: a tag of the principal, K=V (repeatable).
    #[arg(long = "attr", requires = "principal")]
    attrs: Vec<String>,
    /// With --principal: the actor, ISSUER:SUB.
    #[arg(long, requires = "principal")]
    actor: Option<String>,
    /// With --actor: a tag of the actor, K=V (repeatable).
    #[arg(long = "actor-attr", requires = "actor")]
    actor_attrs: Vec<String>,
    /// With --principal: the subject token is one of tessera's own (a re-exchange).
    #[arg(long, requires = "principal")]
    tessera_subject: bool,
    /// With --principal: the delegation depth [default: 1 with --actor, else 0].
    #[arg(long, requires = "principal")]
    depth: Option<usize>,
    /// With --principal and no --config: a label of the audience, K=V (repeatable).
    #[arg(long = "label", requires = "principal")]
    labels: Vec<String>,
    /// The audience.
    #[arg(long)]
    audience: Option<String>,
    /// The scopes asked for, space-separated.
    #[arg(long)]
    scope: Option<String>,
    /// The task [default: the subject token's, or `explain`].
    #[arg(long, default_value = "")]
    task_id: String,
    /// The calling client's id (`context.client_id`).
    #[arg(long, default_value = "")]
    client_id: String,
    /// The request's purpose.
    #[arg(long, default_value = "")]
    purpose: String,
    /// The lifetime asked for, in seconds (0: as long as allowed).
    #[arg(long, default_value_t = 0)]
    ttl: u32,
    /// RFC 9396 `authorization_details` asked for, a JSON array (`context.authorization_details`;
    /// with --subject-token and --config they are checked against the catalog as the exchange would).
    #[arg(long, default_value = "")]
    authorization_details: String,
}

/// Validates a Cedar policy file against tessera's schema, or (with a subject) prints each scope's decision
/// and the policies that made it.
pub(super) fn policy_check(args: &PolicyCheckArgs) -> Result<ExitCode, String> {
    let from_file = match &args.file {
        None => None,
        Some(file) => {
            let source = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let policy = Policy::new(&source)
                .map_err(|problems| format!("{}:\n  - {}", file.display(), problems.join("\n  - ")))?;
            Some((file.display().to_string(), policy))
        }
    };
    let config = args.config.as_deref().map(|c| load_config(c, Overrides::default())).transpose()?;
    if args.subject_token.is_none() && args.principal.is_none() {
        return match (from_file, &args.config) {
            (Some((name, _)), _) => {
                println!("{name}: ok");
                Ok(ExitCode::SUCCESS)
            }
            (None, Some(c)) => {
                println!("{}: policy ok", c.display());
                Ok(ExitCode::SUCCESS)
            }
            (None, None) => Err("policy check: give a policy FILE, or --config".into()),
        };
    }
    let name = match (&from_file, &args.config) {
        (Some((name, _)), _) => name.clone(),
        (None, Some(c)) => format!("{} [policy]", c.display()),
        (None, None) => "the built-in default policy".to_string(),
    };
    let explained = match config {
        Some(mut config) if args.subject_token.is_some() => {
            if let Some((_, policy)) = from_file {
                config.policy = policy;
            }
            explain_token(args, config)?
        }
        config => {
            let policy = match (from_file, config.as_ref()) {
                (Some((_, p)), _) => Some(p),
                (None, Some(_)) => None,
                (None, None) => Some(Policy::new(DEFAULT_POLICY).map_err(|p| p.join("; "))?),
            };
            explain_principal(args, config.as_ref(), policy.as_ref())?
        }
    };
    print_explained(&name, &explained);
    Ok(ExitCode::SUCCESS)
}

fn explain_token(args: &PolicyCheckArgs, config: tessera::config::Config) -> Result<Explained, String> {
    let subject = super::client::read_token(args.subject_token.as_deref().unwrap_or_default())?;
    let actor = args.actor_token.as_deref().map(super::client::read_token).transpose()?.unwrap_or_default();
    // An upstream subject needs a task (a tessera token brings its own): `explain` unless one is given.
    let task_id = match args.task_id.is_empty() && issued_by(&subject).as_deref() != Some(config.broker_issuer.as_str())
    {
        true => "explain".to_string(),
        false => args.task_id.clone(),
    };
    let request = ExchangeRequest {
        grant_type: tessera::exchange::GRANT_TYPE_TOKEN_EXCHANGE.into(),
        audience: args.audience.iter().cloned().collect(),
        scope: args.scope.clone().unwrap_or_default(),
        subject_token: Token::new(subject),
        subject_token_type: tessera::exchange::TOKEN_TYPE_JWT.into(),
        actor_token_type: if actor.is_empty() { String::new() } else { tessera::exchange::TOKEN_TYPE_JWT.into() },
        actor_token: Token::new(actor),
        task_id,
        purpose: args.purpose.clone(),
        requested_expires_in: args.ttl,
        authorization_details: args.authorization_details.clone(),
        ..ExchangeRequest::default()
    };
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let broker = tessera::serve::broker(config, tessera::metrics::Metrics::global()).await?;
        broker
            .current()
            .explain(&args.client_id, &request, tessera::clock::now())
            .await
            .map_err(|e| format!("the exchange is refused before policy: {e}"))
    })
}

/// The `iss` a JWT claims, read without verifying it (only to pick a default): `None` if it has none.
fn issued_by(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// `ISSUER:SUB` and its `K=V` tags as a principal; with a config, its issuer's identifier and SPIFFE parts
/// come from the issuer named ISSUER.
fn stated_principal(
    spec: &str,
    attrs: &[String],
    config: Option<&tessera::config::Config>,
) -> Result<Principal, String> {
    let (issuer, sub) =
        spec.split_once(':').filter(|(i, s)| !i.is_empty() && !s.is_empty()).ok_or("expected ISSUER:SUB")?;
    let found = config.and_then(|c| c.issuers.iter().map(|(s, _)| s).find(|s| s.name == issuer));
    if config.is_some() && found.is_none() {
        return Err(format!("the config has no issuer named `{issuer}`"));
    }
    let spiffe = match found {
        Some(s) => SpiffeId::parse(sub).filter(|id| Some(id.trust_domain.as_str()) == s.spiffe_trust_domain.as_deref()),
        None => SpiffeId::parse(sub),
    };
    Ok(Principal {
        issuer: issuer.to_string(),
        iss: found.map_or_else(|| issuer.to_string(), |s| s.id()),
        sub: sub.to_string(),
        attributes: pairs(attrs)?.into_iter().collect(),
        spiffe,
    })
}

fn pairs(items: &[String]) -> Result<Vec<(String, String)>, String> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("`{kv}`: expected K=V"))
        })
        .collect()
}

fn explain_principal(
    args: &PolicyCheckArgs,
    config: Option<&tessera::config::Config>,
    policy: Option<&Policy>,
) -> Result<Explained, String> {
    let policy = match (policy, config) {
        (Some(p), _) => p,
        (None, Some(c)) => &c.policy,
        (None, None) => return Err("no policy".into()),
    };
    let principal = stated_principal(args.principal.as_deref().unwrap_or_default(), &args.attrs, config)?;
    let actor = args.actor.as_deref().map(|a| stated_principal(a, &args.actor_attrs, config)).transpose()?;
    let audience = args.audience.clone().unwrap_or_default();
    let scopes = Scopes::parse_request(args.scope.as_deref().unwrap_or_default()).map_err(|e| e.to_string())?;
    let catalog = config.map(|c| Catalog::new(c.audiences.clone(), c.broker_issuer.clone(), c.task_token_max_ttl));
    let mut labels = Labels::new();
    for (k, v) in pairs(&args.labels)? {
        labels.entry(k).or_default().insert(v);
    }
    let (target, grant, task_token) = match &catalog {
        Some(catalog) => {
            let d = catalog.destination(&audience).ok_or_else(|| format!("`{audience}` is not in the catalog"))?;
            for scope in scopes.iter() {
                if !catalog.has_scope(d, scope) {
                    return Err(format!("scope `{scope}` is not offered for `{audience}`: refused before policy"));
                }
            }
            (catalog.target(d), d.grant(), matches!(d, Destination::Broker { .. }))
        }
        None => (
            Target { id: &audience, scopes: scopes.iter().collect(), max_ttl: 300, labels: &labels },
            Grant::Partial,
            false,
        ),
    };
    let max_ttl = target.max_ttl;
    let requested_ttl = if args.ttl == 0 { max_ttl } else { u64::from(args.ttl).min(max_ttl) };
    let task_id = if args.task_id.is_empty() { "explain" } else { args.task_id.as_str() };
    let depth = args.depth.unwrap_or(usize::from(actor.is_some()));
    let details = match args.authorization_details.is_empty() {
        true => None,
        false => Some(tessera::rar::Details::parse(&args.authorization_details).map_err(|e| e.to_string())?),
    };
    let question = Question {
        principal: &principal,
        actor: actor.as_ref(),
        audience: target,
        task_id,
        purpose: (!args.purpose.is_empty()).then_some(args.purpose.as_str()),
        session_id: None,
        client_id: &args.client_id,
        depth,
        chain: actor.iter().cloned().collect(),
        subject_is_tessera_token: args.tessera_subject,
        task_token,
        requested_ttl,
        now: tessera::clock::now(),
        authorization_details: details.as_ref(),
    };
    let decisions = policy.decide(&question, &scopes).map_err(|e| e.to_string())?;
    Ok(Explained {
        principal: principal.clone(),
        actor: actor.clone(),
        audience,
        grant,
        depth,
        subject_is_tessera_token: args.tessera_subject,
        task_token,
        task_id: task_id.to_string(),
        requested_ttl,
        decisions,
    })
}

fn describe(p: &Principal) -> String {
    let tags: Vec<String> = p.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = format!("{} {}", p.issuer, p.sub);
    if !tags.is_empty() {
        out.push_str(&format!(" [{}]", tags.join(" ")));
    }
    if let Some(id) = &p.spiffe {
        out.push_str(&format!(" (spiffe trust domain {}, path {})", id.trust_domain, id.path));
    }
    out
}

fn print_explained(policy: &str, e: &Explained) {
    println!("policy: {policy}");
    println!("subject: {}{}", describe(&e.principal), if e.subject_is_tessera_token { " (tessera token)" } else { "" });
    if let Some(actor) = &e.actor {
        println!("actor: {}", describe(actor));
    }
    println!(
        "audience: {}{} (grant {}), task {}, depth {}, requested_ttl {}",
        e.audience,
        if e.task_token { " [task token]" } else { "" },
        e.grant.as_str(),
        e.task_id,
        e.depth,
        e.requested_ttl
    );
    let width = e.decisions.iter().map(|d| d.scope.len()).max().unwrap_or(0);
    for d in &e.decisions {
        let (word, why) = match (d.allowed, d.errors.is_empty(), d.policies.is_empty()) {
            (true, _, _) if !d.approval.is_empty() => (
                "allow",
                format!("permitted by {} once a human approves: {}", d.policies.join(", "), d.approval.join("; ")),
            ),
            (true, _, _) => ("allow", format!("permitted by {}", d.policies.join(", "))),
            (false, false, _) => ("deny", format!("evaluation error: {}", d.errors.join("; "))),
            (false, true, true) => ("deny", "no policy permits it".to_string()),
            (false, true, false) => ("deny", format!("forbidden by {}", d.policies.join(", "))),
        };
        println!("{:width$}  {word:5}  {why}", d.scope);
    }
    let denied = e.decisions.iter().filter(|d| !d.allowed).count();
    let waiting = e.decisions.iter().filter(|d| d.allowed && !d.approval.is_empty()).count();
    let verdict = match (denied, e.grant) {
        (n, _) if waiting > 0 && n < e.decisions.len() && (n == 0 || e.grant == Grant::Partial) => {
            "the exchange would wait for a human's approval: authorization_pending".to_string()
        }
        (0, _) => "every scope would be granted".to_string(),
        (n, _) if n == e.decisions.len() => "the exchange would be refused: invalid_scope".to_string(),
        (_, Grant::Strict) => "the exchange would be refused (strict audience): invalid_scope".to_string(),
        (n, Grant::Partial) => format!("{n} scope(s) would be left out of the grant"),
    };
    println!("=> {verdict}");
}

/// Prints an assertion signed by the dev issuer.
pub(super) fn dev_assertion(dev_dir: &Path, sub: &str, scope: Option<&str>, ttl: u64) -> Result<ExitCode, String> {
    let token = dev::assertion(dev_dir, sub, scope, ttl.clamp(1, 86_400), tessera::clock::now())?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// Prints the audit events that match `filter`, oldest first, one JSON object per line.
pub(super) async fn audit(redis_url: &str, filter: tessera::audit::Filter) -> Result<ExitCode, String> {
    for e in tessera::audit::stream::read(redis_url, &filter).await? {
        println!("{}", serde_json::to_string(&e).map_err(|e| e.to_string())?);
    }
    Ok(ExitCode::SUCCESS)
}
