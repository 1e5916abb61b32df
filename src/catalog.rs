//! The resource catalog: every downstream audience the broker issues tokens for, its scopes and the longest
//! lifetime a token for it may have. An audience that is not here gets no token (invariant 3).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::policy::{Labels, Target};
use crate::scopes::Scopes;

/// No labels: the broker's own destination (task tokens) has none.
static NO_LABELS: Labels = Labels::new();

/// One downstream API (a tool, an agent, a gateway) as the catalog describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Audience {
    /// The audience's absolute URI: matched exactly against a request's `audience`/`resource` and written as
    /// the issued token's `aud`.
    pub id: String,
    /// The scopes that may be issued for it; policy can only narrow them.
    pub scopes: Scopes,
    /// Upper bound on `exp - iat` of any token for this audience, in seconds.
    pub max_ttl: u64,
    /// Clients that may introspect this audience's tokens; empty: any client allowed to introspect.
    pub introspect_clients: BTreeSet<String>,
    /// The resource's public URL (RFC 9728 `resource`), when it is not the audience id itself.
    pub resource_url: Option<String>,
    /// Whether tokens for it must be sender-constrained, and how.
    pub sender_constraint: SenderConstraint,
    /// Label name → values (`labels` in the config), which policy reads as the audience's tags.
    pub labels: Labels,
    /// What an exchange gets when policy denies some of the scopes it asks for.
    pub grant: Grant,
    /// The RFC 9396 `authorization_details` types its tokens may carry (`[[audiences.authorization_details]]`);
    /// empty: none, and a request carrying details for it is refused.
    pub detail_types: Vec<crate::rar::DetailType>,
}

/// How an audience's exchanges are granted when policy allows only some of the requested scopes (`grant` in
/// the config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Grant {
    /// The allowed scopes are issued and the response's `scope` says which (RFC 6749 §3.3); only when none
    /// is allowed is the exchange refused.
    #[default]
    Partial,
    /// Any denied scope refuses the whole exchange with `invalid_scope`, and nothing is issued: for callers
    /// that would rather fail than run with less than they asked for.
    Strict,
}

impl Grant {
    /// The config's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Grant::Partial => "partial",
            Grant::Strict => "strict",
        }
    }

    /// The grant mode the config spells `name`.
    pub fn parse(name: &str) -> Option<Grant> {
        [Grant::Partial, Grant::Strict].into_iter().find(|g| g.as_str() == name)
    }
}

/// What an audience requires of the tokens issued for it (`sender_constraint` in the config): whether they must
/// be bound to a key the caller proves it holds, so that a stolen token is useless.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SenderConstraint {
    /// Bearer tokens are fine; a token is still bound when the exchange carries a DPoP proof.
    #[default]
    None,
    /// Only DPoP-bound tokens (RFC 9449, `cnf.jkt`): an exchange without a proof is refused.
    Dpop,
    /// Only certificate-bound tokens (RFC 8705, `cnf["x5t#S256"]`): an exchange over a connection without a
    /// client certificate is refused.
    Mtls,
    /// Either binding.
    Any,
}

impl SenderConstraint {
    /// The config's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            SenderConstraint::None => "none",
            SenderConstraint::Dpop => "dpop",
            SenderConstraint::Mtls => "mtls",
            SenderConstraint::Any => "any",
        }
    }

    /// The constraint the config spells `name`.
    pub fn parse(name: &str) -> Option<SenderConstraint> {
        [SenderConstraint::None, SenderConstraint::Dpop, SenderConstraint::Mtls, SenderConstraint::Any]
            .into_iter()
            .find(|c| c.as_str() == name)
    }
}

/// What forward-auth requires of a gateway path: a token for `audience` holding every one of `scopes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The path prefix, from `/`; the longest matching one decides.
    pub path_prefix: String,
    /// The catalogued audience the token must be for.
    pub audience: String,
    /// The scopes the token must all hold.
    pub scopes: Scopes,
    /// What the token's `authorization_details` must hold for a request under this route, if anything.
    pub details: Option<crate::rar::Requirement>,
}

impl Route {
    /// Whether `path` falls under the route, and its path parameters: `path_prefix` is matched segment by
    /// segment, where a segment `{name}` takes any one non-empty segment of the path as the parameter `name`
    /// (compared as written, never decoded); without parameters it is a plain prefix, as before.
    pub fn matches(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let mut params = BTreeMap::new();
        if !self.path_prefix.contains('{') {
            return path.starts_with(&self.path_prefix).then_some(params);
        }
        // A path the upstream may read otherwise than it is written here — a dot segment, an encoded dot,
        // slash or backslash — falls under no parameterised route (refused), so `/cases/1234/../5678` cannot
        // pass for case 1234.
        let lower = path.to_ascii_lowercase();
        if path.split('/').any(|s| s == "." || s == "..")
            || ["%2e", "%2f", "%5c", "\\"].iter().any(|e| lower.contains(e))
        {
            return None;
        }
        let mut given = path.split('/');
        for want in self.path_prefix.split('/') {
            let got = given.next()?;
            match want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                Some(name) if !got.is_empty() => {
                    params.insert(name.to_string(), got.to_string());
                }
                Some(_) => return None,
                None if want == got => {}
                None => return None,
            }
        }
        Some(params)
    }
}

/// Where an exchanged token may go: a catalogued API, or the broker itself (a *task token*: an orchestrator's
/// ceiling for one task, with scopes across several catalogued audiences).
#[derive(Clone, Copy, Debug)]
pub enum Destination<'a> {
    /// A catalogued audience.
    Downstream(&'a Audience),
    /// The broker itself: the token is a task token.
    Broker {
        /// `broker.issuer`.
        id: &'a str,
        /// `broker.task_token_max_ttl`, in seconds.
        max_ttl: u64,
    },
}

impl Destination<'_> {
    /// The issued token's `aud`.
    pub fn id(&self) -> &str {
        match self {
            Destination::Downstream(a) => &a.id,
            Destination::Broker { id, .. } => id,
        }
    }

    /// What it requires of a token's binding (task tokens: nothing; a bound one stays bound all the same).
    pub fn sender_constraint(&self) -> SenderConstraint {
        match self {
            Destination::Downstream(a) => a.sender_constraint,
            Destination::Broker { .. } => SenderConstraint::None,
        }
    }

    /// How a partial grant is handled: the audience's `grant`; task tokens are always partial.
    pub fn grant(&self) -> Grant {
        match self {
            Destination::Downstream(a) => a.grant,
            Destination::Broker { .. } => Grant::Partial,
        }
    }

    /// The RFC 9396 detail types a token for it may carry (task tokens: none).
    pub fn detail_types(&self) -> &[crate::rar::DetailType] {
        match self {
            Destination::Downstream(a) => &a.detail_types,
            Destination::Broker { .. } => &[],
        }
    }

    /// The longest life a token for this destination may have, in seconds.
    pub fn max_ttl(&self) -> u64 {
        match self {
            Destination::Downstream(a) => a.max_ttl,
            Destination::Broker { max_ttl, .. } => *max_ttl,
        }
    }
}

/// The catalogued audiences, by id, and the broker's own identity as the destination of task tokens.
#[derive(Clone, Debug)]
pub struct Catalog {
    audiences: HashMap<String, Audience>,
    broker_issuer: String,
    task_token_max_ttl: u64,
    all_scopes: BTreeSet<String>,
    /// Forward-auth's routes, longest prefix first.
    routes: Vec<Route>,
    /// The clients that may introspect task tokens.
    task_introspect_clients: BTreeSet<String>,
}

impl Catalog {
    /// The catalog of `audiences`; `broker_issuer` names task tokens' destination, which lives at most
    /// `task_token_max_ttl` seconds.
    pub fn new(audiences: Vec<Audience>, broker_issuer: String, task_token_max_ttl: u64) -> Catalog {
        let all_scopes = audiences.iter().flat_map(|a| a.scopes.iter().map(str::to_string)).collect();
        let audiences = audiences.into_iter().map(|a| (a.id.clone(), a)).collect();
        Catalog {
            audiences,
            broker_issuer,
            task_token_max_ttl,
            all_scopes,
            routes: Vec::new(),
            task_introspect_clients: BTreeSet::new(),
        }
    }

    /// The catalog with forward-auth's routes (validated against it by the config).
    pub fn with_routes(mut self, mut routes: Vec<Route>) -> Catalog {
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        self.routes = routes;
        self
    }

    /// Every scope any catalogued audience offers, sorted (RFC 8414 `scopes_supported`).
    pub(crate) fn scopes(&self) -> impl Iterator<Item = &str> {
        self.all_scopes.iter().map(String::as_str)
    }

    /// Every RFC 9396 detail type any catalogued audience accepts, sorted and once each (RFC 9396 §10.1
    /// `authorization_details_types_supported`).
    pub fn detail_types(&self) -> Vec<&str> {
        let types: BTreeSet<&str> =
            self.audiences.values().flat_map(|a| a.detail_types.iter().map(|t| t.name.as_str())).collect();
        types.into_iter().collect()
    }

    /// How many audiences are catalogued.
    pub fn len(&self) -> usize {
        self.audiences.len()
    }

    /// Whether no audience is catalogued (only task tokens can be issued).
    pub fn is_empty(&self) -> bool {
        self.audiences.is_empty()
    }

    /// How many forward-auth routes there are.
    pub fn routes(&self) -> usize {
        self.routes.len()
    }

    /// The route a gateway path falls under (the longest matching prefix), with the path's parameters.
    pub fn route(&self, path: &str) -> Option<(&Route, BTreeMap<String, String>)> {
        self.routes.iter().find_map(|r| r.matches(path).map(|p| (r, p)))
    }

    /// The target named `id`, if the broker issues for it.
    pub fn destination(&self, id: &str) -> Option<Destination<'_>> {
        if id == self.broker_issuer {
            return Some(Destination::Broker { id: &self.broker_issuer, max_ttl: self.task_token_max_ttl });
        }
        self.audiences.get(id).map(Destination::Downstream)
    }

    /// `target` as policy sees it: its id, scopes (every catalogued scope for a task token), longest
    /// lifetime and labels.
    pub fn target<'c>(&'c self, target: Destination<'c>) -> Target<'c> {
        match target {
            Destination::Downstream(a) => {
                Target { id: &a.id, scopes: a.scopes.iter().collect(), max_ttl: a.max_ttl, labels: &a.labels }
            }
            Destination::Broker { id, max_ttl } => {
                Target { id, scopes: self.all_scopes.iter().map(String::as_str).collect(), max_ttl, labels: &NO_LABELS }
            }
        }
    }

    /// The catalogued downstream audience named `id` (not the broker itself).
    pub fn audience(&self, id: &str) -> Option<&Audience> {
        self.audiences.get(id)
    }

    /// Whether `scope` exists for `target`: a catalogued audience's own scopes, or any catalogued scope for a
    /// task token.
    pub fn has_scope(&self, target: Destination<'_>, scope: &str) -> bool {
        match target {
            Destination::Downstream(a) => a.scopes.contains(scope),
            Destination::Broker { .. } => self.all_scopes.contains(scope),
        }
    }

    /// The longest lifetime any token can have.
    pub fn max_ttl(&self) -> u64 {
        self.audiences.values().map(|a| a.max_ttl).fold(self.task_token_max_ttl, u64::max)
    }

    /// The catalog whose task tokens these clients may introspect (`broker.task_introspect_clients`).
    pub fn with_task_introspect_clients(mut self, clients: BTreeSet<String>) -> Catalog {
        self.task_introspect_clients = clients;
        self
    }

    /// Whether `client` may introspect tokens for `audience`: only a client registered for it (the
    /// audience's `introspect_clients`; for task tokens, `broker.task_introspect_clients`). Registration is
    /// explicit, so a client allowed the RPC cannot scan tokens of audiences it does not serve.
    pub fn may_introspect(&self, audience: &str, client: &str) -> bool {
        match self.audiences.get(audience) {
            Some(a) => a.introspect_clients.contains(client),
            None => audience == self.broker_issuer && self.task_introspect_clients.contains(client),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let crm = Audience {
            id: "https://crm.example".into(),
            scopes: Scopes::parse("crm:read").unwrap(),
            max_ttl: 300,
            introspect_clients: ["gateway".into()].into(),
            resource_url: None,
            sender_constraint: SenderConstraint::None,
            labels: Labels::new(),
            grant: Grant::Partial,
            detail_types: vec![],
        };
        let mail = Audience {
            id: "https://mail.example".into(),
            scopes: Scopes::parse("mail:send").unwrap(),
            max_ttl: 60,
            introspect_clients: Default::default(),
            resource_url: None,
            sender_constraint: SenderConstraint::None,
            labels: Labels::new(),
            grant: Grant::Partial,
            detail_types: vec![],
        };
        Catalog::new(vec![crm, mail], "https://tessera.test".into(), 3600)
    }

    #[test]
    fn downstream_scopes_are_per_audience_and_task_tokens_see_all() {
        let c = catalog();
        let crm = c.destination("https://crm.example").unwrap();
        assert!(c.has_scope(crm, "crm:read"));
        assert!(!c.has_scope(crm, "mail:send"));
        let task = c.destination("https://tessera.test").unwrap();
        assert!(c.has_scope(task, "crm:read") && c.has_scope(task, "mail:send"));
        assert_eq!(task.max_ttl(), 3600);
        assert!(c.destination("https://unknown.example").is_none());
        assert_eq!(c.max_ttl(), 3600);
    }

    #[test]
    fn introspection_is_limited_to_listed_clients() {
        let c = catalog();
        assert!(c.may_introspect("https://crm.example", "gateway"));
        assert!(!c.may_introspect("https://crm.example", "other"));
        // Registration is explicit: an audience that lists no one is introspectable by no one.
        assert!(!c.may_introspect("https://mail.example", "other"));
        assert!(!c.may_introspect("https://tessera.test", "other"), "task tokens: nobody unless listed");
        assert!(!c.may_introspect("https://unknown.example", "gateway"));
        let c = c.with_task_introspect_clients(["operator".to_string()].into());
        assert!(c.may_introspect("https://tessera.test", "operator"));
        assert!(!c.may_introspect("https://tessera.test", "gateway"));
    }
}
