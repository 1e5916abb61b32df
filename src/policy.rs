//! Policy: the Cedar engine decides, per requested scope, whether a principal acting through its actor chain
//! may get that scope on an audience for a task.
//!
//! Policy sits after the invariants: it can refuse a scope the invariants allow, never grant one they forbid.
//! Decisions are per scope, and every evaluation error counts as a refusal. Requests are modelled with few
//! generic policies reading entity data (principal tags from the issuer's claim mapping, audience labels from
//! the catalog), because Cedar's cost grows with the number of policies, not with the size of the data.
//!
//! The policy set is parsed and validated against [`SCHEMA`] once, at load; a policy's `@id` annotation
//! becomes its Cedar id, so validation errors, [`Decision::policies`] and audit events name policies the way
//! their authors did. The entities and the context of an exchange are built once per exchange
//! ([`Policy::decide`]); each scope then costs one evaluation.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Schema, ValidationMode, Validator,
};
use cedar_policy_core::ast::{self as core, Literal, PartialValue, Value};
use cedar_policy_core::entities::{Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use ref_cast::RefCast as _;
use smol_str::SmolStr;
use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::scopes::Scopes;

/// The schema every policy is validated against (`policy/schema.cedarschema`).
pub const SCHEMA: &str = include_str!("../policy/schema.cedarschema");
/// The policy used when the config names none (`policy/default.cedar`).
pub const DEFAULT_POLICY: &str = include_str!("../policy/default.cedar");

/// A SPIFFE ID split into its trust domain and path (`spiffe://<trust_domain><path>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    /// The trust domain (`agents.example.org`).
    pub trust_domain: String,
    /// The path, from its leading `/` (`/ns/agents/sa/summariser`); may be empty.
    pub path: String,
}

impl SpiffeId {
    /// `id` split, when it is a SPIFFE ID (`spiffe://` and a non-empty trust domain).
    pub fn parse(id: &str) -> Option<SpiffeId> {
        let rest = id.strip_prefix("spiffe://")?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        (!trust_domain.is_empty()).then(|| SpiffeId { trust_domain: trust_domain.into(), path: path.into() })
    }
}

/// An identity as policy sees it: who issued it and which attributes its issuer's mapping exposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The issuer's short name in the config (`kubernetes`, `github`, `dev`).
    pub issuer: String,
    /// The issuer's identifier (its `iss`, or `spiffe://<trust domain>` for JWT-SVIDs without one).
    pub iss: String,
    /// The subject, unique within its issuer; the Cedar entity id is `"<iss>|<sub>"`.
    pub sub: String,
    /// Tags from the issuer's `attributes` mapping (`principal.getTag("namespace")`); a tag is absent when
    /// its claim was.
    pub attributes: BTreeMap<String, String>,
    /// The SPIFFE ID's parts (`principal.spiffe.trust_domain`, `.path`), when the issuer is a SPIFFE trust
    /// domain and `sub` is one of its SPIFFE IDs; set by the issuer that verified it, never from a claim.
    pub spiffe: Option<SpiffeId>,
}

/// The audience as policy sees it (the Cedar `resource`).
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// The audience id; `broker.issuer` for a task token.
    pub id: &'a str,
    /// The scopes the catalog offers for it (`resource.scopes`); every catalogued scope for a task token.
    pub scopes: Vec<&'a str>,
    /// Its longest token lifetime, in seconds (`resource.max_ttl`).
    pub max_ttl: u64,
    /// Its `labels` from the config (tags: `resource.getTag("namespaces")`).
    pub labels: &'a Labels,
}

/// An audience's labels: label name → values.
pub type Labels = BTreeMap<String, BTreeSet<String>>;

/// Everything one exchange tells policy, apart from the scope being decided.
#[derive(Debug)]
pub struct Question<'a> {
    /// The subject: the Cedar `principal`.
    pub principal: &'a Principal,
    /// The actor of this exchange, when an `actor_token` was given (`context.actor`).
    pub actor: Option<&'a Principal>,
    /// The target audience (the Cedar `resource`).
    pub audience: Target<'a>,
    /// The task the token is bound to (`context.task_id`).
    pub task_id: &'a str,
    /// The request's purpose, when given (`context.purpose`).
    pub purpose: Option<&'a str>,
    /// The session, when there is one (`context.session_id`).
    pub session_id: Option<&'a str>,
    /// The calling client (`context.client_id`).
    pub client_id: &'a str,
    /// Actors in the `act` chain of the token being issued; 0: no delegation (`context.depth`).
    pub depth: usize,
    /// Every actor in that chain, the acting one first (`context.chain`, `context.actors`).
    pub chain: Vec<Principal>,
    /// The subject token is one of tessera's own: a re-exchange (`context.subject_is_tessera_token`).
    pub subject_is_tessera_token: bool,
    /// The audience is tessera itself (`context.task_token`).
    pub task_token: bool,
    /// Seconds the issued token would live (`context.requested_ttl`).
    pub requested_ttl: u64,
    /// Unix seconds (`context.now`).
    pub now: u64,
    /// The RFC 9396 details the token would carry — the request's, or the subject token's when the request
    /// names none (`context.authorization_details`, a typed projection: [`detail_record`]).
    pub authorization_details: Option<&'a crate::rar::Details>,
}

/// One detail entry as Cedar sees it (Cedar has no arbitrary JSON): `type`, `actions` (its string values;
/// empty when absent) and `identifier` (empty when absent or not a string). Every attribute is always there,
/// so a policy can compare an entry, or the whole set, with a record literal under strict validation (which
/// neither compares records with optional attributes nor allows empty set literals). Other fields — the
/// other RFC 9396 sets, limits such as `amount` — are not projected: the type's schema and the narrowing
/// rule bound them.
fn detail_record(entry: &serde_json::Map<String, serde_json::Value>) -> Value {
    let actions = entry.get("actions").and_then(serde_json::Value::as_array);
    let actions = actions.into_iter().flatten().filter_map(serde_json::Value::as_str);
    let identifier = entry.get("identifier").and_then(serde_json::Value::as_str).unwrap_or_default();
    Value::record(
        [
            ("type", string(crate::rar::type_of(entry))),
            ("actions", strings(actions)),
            ("identifier", string(identifier)),
        ],
        None,
    )
}

/// Cedar values, built as values. Cedar's public API takes *expressions* for entity attributes and the
/// context and evaluates them into values at every request, which cost more than the decision itself
/// (docs/benchmarks.md); what tessera passes is never more than strings, numbers, booleans, entity
/// references, sets and records of them, so it builds those values directly (cedar-policy-core, the version
/// cedar-policy itself pins). In debug builds — every test — each value is still checked against the schema
/// ([`Policy::decide`]).
fn string(v: &str) -> Value {
    Value::from(v)
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> Value {
    Value::set_of_lits(values.into_iter().map(Literal::from), None)
}

fn number(v: u64) -> Value {
    Value::from(long(v))
}

fn uid(u: &EntityUid) -> Value {
    Value::from(core::EntityUID::from(u.clone()))
}

/// An entity with these attributes and tags and no parent (tessera's entities have none).
fn entity<'a>(
    u: &EntityUid,
    attrs: impl IntoIterator<Item = (&'a str, Value)>,
    tags: impl IntoIterator<Item = (SmolStr, PartialValue)>,
) -> core::Entity {
    let attrs = attrs.into_iter().map(|(k, v)| (SmolStr::new(k), PartialValue::from(v)));
    core::Entity::new_with_attr_partial_value(u.clone().into(), attrs, HashSet::new(), HashSet::new(), tags)
}

/// One scope's decision, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The scope decided.
    pub scope: String,
    /// Granted: some `permit` matched, no `forbid` did, and no policy failed to evaluate.
    pub allowed: bool,
    /// The policies that decided it, by id (their `@id`, else Cedar's positional `policyN`): the `permit`s
    /// that matched for an allow, the `forbid`s that matched for a deny; empty for a deny because nothing
    /// permits it.
    pub policies: Vec<String>,
    /// Evaluation errors (`error while evaluating policy `id`: …`); any refuses the scope.
    pub errors: Vec<String>,
    /// Step-up: the scope is allowed, but only by policies annotated `@approval("why")` — a human must
    /// approve the grant first ([`crate::approval`]). Their reasons, in policy order; empty when any policy
    /// without the annotation allows it (or it is not allowed).
    pub approval: Vec<String>,
}

impl Decision {
    /// `scope=allow:id,id`, `scope=deny:id`, `scope=deny:-` (nothing permits it), `scope=error:id`: how audit
    /// events and logs write a decision.
    pub fn summary(&self) -> String {
        let (word, ids) = match (self.allowed, self.errors.is_empty()) {
            (true, _) if !self.approval.is_empty() => ("approval", self.policies.join(",")),
            (true, _) => ("allow", self.policies.join(",")),
            (false, false) => ("error", self.errors.iter().map(|e| error_policy(e)).collect::<Vec<_>>().join(",")),
            (false, true) if self.policies.is_empty() => ("deny", "-".to_string()),
            (false, true) => ("deny", self.policies.join(",")),
        };
        format!("{}={word}:{ids}", self.scope)
    }
}

/// The policy id quoted in an evaluation error's text.
fn error_policy(error: &str) -> &str {
    error.split('`').nth(1).unwrap_or("?")
}

/// The scopes allowed among `decisions`, in the order decided.
pub fn allowed_scopes(requested: &Scopes, decisions: &[Decision]) -> Scopes {
    requested.filter(|s| decisions.iter().any(|d| d.allowed && d.scope == s))
}

/// A validated Cedar policy set with its schema, consulted once per requested scope.
pub struct Policy {
    policies: PolicySet,
    /// The policies that can apply to a request for each audience a policy names in its head: those naming
    /// it plus every policy whose head names no audience. Cedar evaluates every policy it is given, so
    /// handing it only these keeps a decision's cost to the policies that could apply.
    by_audience: std::collections::HashMap<EntityUid, PolicySet>,
    /// The policies whose head names no audience: all that can apply to an audience no policy names.
    unscoped: PolicySet,
    /// The `@approval("why")` annotation of each policy that has one, by policy id: a grant allowed only by
    /// such policies waits for a human ([`Decision::approval`]).
    approvals: std::collections::HashMap<String, String>,
    schema: Schema,
    authorizer: Authorizer,
    principal_type: EntityTypeName,
    audience_type: EntityTypeName,
    action: EntityUid,
    /// Audience entities already built, by audience id ([`Policy::audience_entity`]).
    audiences: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<AudienceEntity>>>,
}

/// At most this many audience entities are kept built (a catalog has far fewer audiences); past it, the others
/// are built at each decision.
const AUDIENCES_KEPT: usize = 4096;

/// An audience's Cedar entity and what it was built from. The same audience is asked about at nearly every
/// exchange, and building its entity (its scopes and labels as Cedar sets) cost more than cloning it; a kept
/// one is used only while the catalog still says the same of that audience, so a reload that changes it is
/// seen at once.
struct AudienceEntity {
    scopes: Vec<String>,
    max_ttl: u64,
    labels: Labels,
    entity: core::Entity,
}

impl AudienceEntity {
    fn describes(&self, t: &Target<'_>) -> bool {
        self.max_ttl == t.max_ttl && self.scopes.iter().eq(t.scopes.iter().copied()) && self.labels == *t.labels
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("policies", &self.policies.policies().count()).finish()
    }
}

/// The policies of `source` in source order, each under its `@id` when it has one: refuses templates
/// (tessera links none) and two policies sharing an id.
fn with_ids(parsed: &PolicySet) -> std::result::Result<PolicySet, Vec<String>> {
    if parsed.templates().next().is_some() {
        return Err(vec!["policy templates (`?principal`, `?resource`) are not supported".into()]);
    }
    let position = |p: &cedar_policy::Policy| {
        p.id().to_string().strip_prefix("policy").and_then(|n| n.parse::<usize>().ok()).unwrap_or(usize::MAX)
    };
    let mut policies: Vec<&cedar_policy::Policy> = parsed.policies().collect();
    policies.sort_by_key(|p| position(p));
    let mut set = PolicySet::new();
    let mut problems = Vec::new();
    for p in policies {
        let named = match p.annotation("id") {
            Some(id) if !id.is_empty() => p.new_id(PolicyId::new(id)),
            Some(_) => {
                problems.push(format!("{}: `@id` is empty", p.id()));
                continue;
            }
            None => p.clone(),
        };
        let id = named.id().to_string();
        if set.add(named).is_err() {
            problems.push(format!("two policies have the id `{id}` (`@id` annotations must be unique)"));
        }
    }
    if problems.is_empty() { Ok(set) } else { Err(problems) }
}

impl Policy {
    /// Parses `source` and validates it against the schema; every problem is reported.
    pub fn new(source: &str) -> std::result::Result<Policy, Vec<String>> {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).map_err(|e| vec![format!("schema: {e}")])?;
        let parsed = PolicySet::from_str(source).map_err(|e| {
            let mut problems = vec![format!("policy does not parse: {e}")];
            problems.extend(miette_causes(&e));
            problems
        })?;
        let policies = with_ids(&parsed)?;
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        let problems: Vec<String> =
            validation.validation_errors().map(|e| format!("policy `{}`: {e}", e.policy_id())).collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        let name = |s: &str| EntityTypeName::from_str(s).map_err(|e| vec![e.to_string()]);
        let (by_audience, unscoped) = slices(&policies);
        let mut approvals = std::collections::HashMap::new();
        let mut problems = Vec::new();
        for p in policies.policies() {
            let Some(why) = p.annotation("approval") else { continue };
            match p.effect() {
                cedar_policy::Effect::Permit if !why.trim().is_empty() => {
                    approvals.insert(p.id().to_string(), why.to_string());
                }
                cedar_policy::Effect::Permit => {
                    problems.push(format!("policy `{}`: `@approval` needs a reason for the approver", p.id()))
                }
                cedar_policy::Effect::Forbid => problems.push(format!(
                    "policy `{}`: `@approval` marks a `permit` (a grant that needs a human); a `forbid` always refuses",
                    p.id()
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy {
            policies,
            by_audience,
            unscoped,
            approvals,
            schema,
            authorizer: Authorizer::new(),
            principal_type: name("Tessera::Principal")?,
            audience_type: name("Tessera::Audience")?,
            action: EntityUid::from_str(r#"Tessera::Action::"exchange""#).map_err(|e| vec![e.to_string()])?,
            audiences: std::sync::RwLock::default(),
        })
    }

    /// The schema entities and requests are checked against as they are built: in debug builds (every test)
    /// only. What tessera builds is typed by this module, not by a request, and checking it again at every
    /// decision costs more than the decision (docs/benchmarks.md); the tests prove it fits the schema, and a
    /// value that did not would be an evaluation error, which refuses the scope.
    fn checked(&self) -> Option<&Schema> {
        cfg!(debug_assertions).then_some(&self.schema)
    }

    /// The ids of the policies, in source order (`@id`, else `policyN`).
    pub fn ids(&self) -> impl Iterator<Item = String> + '_ {
        self.policies.policies().map(|p| p.id().to_string())
    }

    fn principal_uid(&self, p: &Principal) -> EntityUid {
        EntityUid::from_type_name_and_id(self.principal_type.clone(), EntityId::new(format!("{}|{}", p.iss, p.sub)))
    }

    fn principal_entity(&self, p: &Principal, u: &EntityUid) -> core::Entity {
        let mut attrs = vec![("issuer", string(&p.issuer)), ("iss", string(&p.iss)), ("sub", string(&p.sub))];
        if let Some(id) = &p.spiffe {
            let record = [("trust_domain", string(&id.trust_domain)), ("path", string(&id.path))];
            attrs.push(("spiffe", Value::record(record, None)));
        }
        let tags = p.attributes.iter().map(|(k, v)| (SmolStr::new(k), string(v).into()));
        entity(u, attrs, tags)
    }

    fn audience_uid(&self, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.audience_type.clone(), EntityId::new(id))
    }

    /// The audience's entity: the one kept for it while it still describes the audience, else built (and
    /// kept). The lock is held only to look up or insert, never while building.
    fn audience_entity(&self, t: &Target<'_>) -> core::Entity {
        let kept = self.audiences.read().ok().and_then(|m| m.get(t.id).cloned());
        if let Some(kept) = kept.filter(|k| k.describes(t)) {
            return kept.entity.clone();
        }
        let attrs = [("scopes", strings(t.scopes.iter().copied())), ("max_ttl", number(t.max_ttl))];
        let tags = t.labels.iter().map(|(k, v)| (SmolStr::new(k), strings(v.iter().map(String::as_str)).into()));
        let entity = entity(&self.audience_uid(t.id), attrs, tags);
        if let Ok(mut m) = self.audiences.write()
            && (m.len() < AUDIENCES_KEPT || m.contains_key(t.id))
        {
            let scopes = t.scopes.iter().map(|s| (*s).to_string()).collect();
            let built = AudienceEntity { scopes, max_ttl: t.max_ttl, labels: t.labels.clone(), entity: entity.clone() };
            m.insert(t.id.to_string(), std::sync::Arc::new(built));
        }
        entity
    }

    /// Decides each scope; returns the scopes allowed, in the order asked.
    pub fn allowed(&self, q: &Question<'_>, scopes: &Scopes) -> Result<Scopes> {
        Ok(allowed_scopes(scopes, &self.decide(q, scopes)?))
    }

    /// Decides each scope, in the order asked, with the policies that decided it. The entities and the
    /// context are built once; each scope is one Cedar evaluation.
    #[tracing::instrument(name = "policy", skip_all)]
    pub fn decide(&self, q: &Question<'_>, scopes: &Scopes) -> Result<Vec<Decision>> {
        // One entity per principal (subject first, then the acting actor, then the rest of the chain): an
        // actor that is the subject, or a chain link that is the actor, under other tags makes no duplicate.
        // Each principal's uid is formatted once, for its entity and wherever the request names it.
        let principal = self.principal_uid(q.principal);
        let actor = q.actor.map(|a| self.principal_uid(a));
        let chain: Vec<EntityUid> = q.chain.iter().map(|a| self.principal_uid(a)).collect();
        let mut seen = BTreeSet::new();
        let mut entities = Vec::new();
        let named = std::iter::once((q.principal, &principal)).chain(q.actor.zip(actor.as_ref()));
        for (p, u) in named.chain(q.chain.iter().zip(&chain)) {
            if seen.insert((p.iss.as_str(), p.sub.as_str())) {
                entities.push(self.principal_entity(p, u));
            }
        }
        entities.push(self.audience_entity(&q.audience));
        if let Some(schema) = self.checked() {
            Entities::from_entities(entities.iter().cloned().map(Entity::from), Some(schema))
                .map_err(|e| Error::internal(format!("policy entities: {e}")))?;
        }
        // No entity has a parent, so the hierarchy is closed as it is.
        let entities = CoreEntities::from_entities(
            entities,
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .map(Entities::from)
        .map_err(|e| Error::internal(format!("policy entities: {e}")))?;
        let resource = self.audience_uid(q.audience.id);
        let mut base = BTreeMap::from([
            (SmolStr::new_static("requested_scopes"), strings(scopes.iter())),
            (SmolStr::new_static("task_id"), string(q.task_id)),
            (SmolStr::new_static("client_id"), string(q.client_id)),
            (SmolStr::new_static("depth"), number(q.depth as u64)),
            (SmolStr::new_static("actors"), strings(q.chain.iter().map(|a| a.sub.as_str()))),
            (SmolStr::new_static("chain"), Value::set(chain.iter().map(uid), None)),
            (SmolStr::new_static("chain_issuers"), strings(q.chain.iter().map(|a| a.issuer.as_str()))),
            (SmolStr::new_static("subject_is_tessera_token"), Value::from(q.subject_is_tessera_token)),
            (SmolStr::new_static("task_token"), Value::from(q.task_token)),
            (SmolStr::new_static("requested_ttl"), number(q.requested_ttl)),
            (SmolStr::new_static("now"), number(q.now)),
            (
                SmolStr::new_static("authorization_details"),
                Value::set(q.authorization_details.iter().flat_map(|d| d.entries()).map(detail_record), None),
            ),
        ]);
        if let Some(actor) = &actor {
            base.insert(SmolStr::new_static("actor"), uid(actor));
        }
        if let Some(purpose) = q.purpose {
            base.insert(SmolStr::new_static("purpose"), string(purpose));
        }
        if let Some(session) = q.session_id {
            base.insert(SmolStr::new_static("session_id"), string(session));
        }
        let applicable = self.by_audience.get(&resource).unwrap_or(&self.unscoped);
        let mut decisions = Vec::new();
        let mut scopes = scopes.iter().peekable();
        while let Some(scope) = scopes.next() {
            // The last scope takes the base pairs themselves; only the others copy them.
            let mut values = if scopes.peek().is_none() { std::mem::take(&mut base) } else { base.clone() };
            values.insert(SmolStr::new_static("scope"), string(scope));
            let context = Context::ref_cast(&core::Context::Value(std::sync::Arc::new(values))).clone();
            let request = cedar_policy::Request::new(
                principal.clone(),
                self.action.clone(),
                resource.clone(),
                context,
                self.checked(),
            )
            .map_err(|e| Error::internal(format!("policy request: {e}")))?;
            let response = self.authorizer.is_authorized(&request, applicable, &entities);
            // Cedar skips a policy whose evaluation errors; for a `forbid` that would mean allowing. Any error
            // therefore refuses the scope.
            let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
            if !errors.is_empty() {
                tracing::warn!(scope, "policy evaluation error; the scope is refused");
            }
            let mut policies: Vec<String> = response.diagnostics().reason().map(|id| id.to_string()).collect();
            policies.sort();
            let allowed = response.decision() == CedarDecision::Allow && errors.is_empty();
            // Step-up only when every permit that matched asks for it: any other permit grants outright.
            let approval: Vec<String> = match allowed {
                true => policies.iter().map(|id| self.approvals.get(id).cloned()).collect::<Option<_>>(),
                false => None,
            }
            .unwrap_or_default();
            decisions.push(Decision { scope: scope.to_string(), allowed, policies, errors, approval });
        }
        Ok(decisions)
    }
}

/// Splits `policies` by the audience their head names (`resource == A`, `resource in A`, `resource is T in
/// A`): such a policy can only match a request for `A`, because audience entities have no parents, so `in A`
/// holds exactly for `A` itself. Every other policy goes to every slice and to the unscoped set.
fn slices(policies: &PolicySet) -> (std::collections::HashMap<EntityUid, PolicySet>, PolicySet) {
    use cedar_policy::ResourceConstraint;
    let named = |p: &cedar_policy::Policy| match p.resource_constraint() {
        ResourceConstraint::Eq(uid) | ResourceConstraint::In(uid) | ResourceConstraint::IsIn(_, uid) => Some(uid),
        ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
    };
    let mut unscoped = PolicySet::new();
    let mut by_audience = std::collections::HashMap::<EntityUid, PolicySet>::new();
    for p in policies.policies() {
        if let Some(uid) = named(p) {
            by_audience.entry(uid).or_default();
        }
    }
    for p in policies.policies() {
        let targets: Vec<&mut PolicySet> = match named(p) {
            Some(uid) => by_audience.get_mut(&uid).into_iter().collect(),
            None => std::iter::once(&mut unscoped).chain(by_audience.values_mut()).collect(),
        };
        for set in targets {
            // Ids are unique in `policies`, so adding one to a slice cannot clash.
            let _ = set.add(p.clone());
        }
    }
    (by_audience, unscoped)
}

/// A count or a time as a Cedar `Long` (saturating: no value tessera passes comes near `i64::MAX`).
fn long(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn miette_causes(e: &dyn std::error::Error) -> Vec<String> {
    std::iter::successors(e.source(), |s| s.source()).map(|s| format!("  caused by: {s}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(issuer: &str, ns: &str) -> Principal {
        Principal {
            issuer: issuer.into(),
            iss: format!("https://{issuer}"),
            sub: "system:serviceaccount:agents:orchestrator".into(),
            attributes: [("namespace".to_string(), ns.to_string())].into(),
            spiffe: None,
        }
    }

    fn crm_scopes() -> Vec<&'static str> {
        vec!["crm:read", "crm:write", "crm:export"]
    }

    fn question<'a>(p: &'a Principal, depth: usize, scopes: &[&'static str], labels: &'a Labels) -> Question<'a> {
        Question {
            principal: p,
            actor: None,
            audience: Target { id: "https://crm.example", scopes: scopes.to_vec(), max_ttl: 300, labels },
            task_id: "t1",
            purpose: None,
            session_id: None,
            client_id: "demo",
            depth,
            chain: vec![],
            subject_is_tessera_token: false,
            task_token: false,
            requested_ttl: 300,
            now: 1_800_000_000,
            authorization_details: None,
        }
    }

    const POLICY: &str = r#"
        @id("agents-crm")
        permit (principal, action == Tessera::Action::"exchange", resource == Tessera::Audience::"https://crm.example")
        when { principal.issuer == "kubernetes" && principal.hasTag("namespace") &&
               principal.getTag("namespace") == "agents" && context.scope like "crm:*" };
        @id("no-delegated-export")
        forbid (principal, action, resource) when { context.scope == "crm:export" && context.depth > 0 };
    "#;

    #[test]
    fn decides_per_scope_with_tags_and_depth() {
        let policy = Policy::new(POLICY).unwrap();
        let (s, l) = (crm_scopes(), Labels::new());
        let p = principal("kubernetes", "agents");
        let scopes = Scopes::parse("crm:read crm:export mail:send").unwrap();
        assert_eq!(policy.allowed(&question(&p, 0, &s, &l), &scopes).unwrap(), "crm:read crm:export");
        assert_eq!(policy.allowed(&question(&p, 1, &s, &l), &scopes).unwrap(), "crm:read");
        let other = principal("kubernetes", "default");
        assert!(policy.allowed(&question(&other, 0, &s, &l), &scopes).unwrap().is_empty());
    }

    #[test]
    fn an_audience_is_seen_as_the_catalog_says_now_though_its_entity_was_kept() {
        // One policy, one audience id, its catalog entry changed between decisions (as a reload changes it).
        let policy = Policy::new(
            r#"permit (principal, action, resource)
               when { resource.scopes.contains(context.scope) && resource.max_ttl >= 300 &&
                      resource.hasTag("namespaces") && resource.getTag("namespaces").contains("agents") };"#,
        )
        .unwrap();
        let p = principal("kubernetes", "agents");
        let read = Scopes::parse("crm:read").unwrap();
        let labels: Labels = [("namespaces".to_string(), ["agents".to_string()].into())].into();
        let others: Labels = [("namespaces".to_string(), ["billing".to_string()].into())].into();
        let allowed = |q: &Question<'_>| !policy.allowed(q, &read).unwrap().is_empty();
        assert!(allowed(&question(&p, 0, &crm_scopes(), &labels)));
        assert!(!allowed(&question(&p, 0, &["crm:write"], &labels)), "crm:read left the audience");
        assert!(!allowed(&question(&p, 0, &crm_scopes(), &others)), "its labels changed");
        let mut shorter = question(&p, 0, &crm_scopes(), &labels);
        shorter.audience.max_ttl = 60;
        assert!(!allowed(&shorter), "its max_ttl changed");
        assert!(allowed(&question(&p, 0, &crm_scopes(), &labels)), "and back");
    }

    #[test]
    fn decisions_name_the_deciding_policies_by_their_id() {
        let policy = Policy::new(POLICY).unwrap();
        let (s, l) = (crm_scopes(), Labels::new());
        let p = principal("kubernetes", "agents");
        let scopes = Scopes::parse("crm:read crm:export mail:send").unwrap();
        let decisions = policy.decide(&question(&p, 1, &s, &l), &scopes).unwrap();
        let summary: Vec<String> = decisions.iter().map(Decision::summary).collect();
        assert_eq!(summary, ["crm:read=allow:agents-crm", "crm:export=deny:no-delegated-export", "mail:send=deny:-"]);
        // Policies without `@id` keep Cedar's positional ids.
        let anonymous = Policy::new("permit (principal, action, resource);").unwrap();
        let d = anonymous.decide(&question(&p, 0, &s, &l), &scopes).unwrap();
        assert_eq!(d[0].policies, ["policy0"]);
        assert_eq!(policy.ids().collect::<Vec<_>>().len(), 2);
    }

    #[test]
    fn each_audience_is_decided_by_its_own_policies_and_the_unscoped_ones() {
        let policy = Policy::new(
            r#"
            @id("crm-read") permit (principal, action, resource == Tessera::Audience::"https://crm.example")
              when { context.scope == "crm:read" };
            @id("mail-all") permit (principal, action, resource in Tessera::Audience::"https://mail.example");
            @id("mail-forbid-export") forbid (principal, action, resource == Tessera::Audience::"https://mail.example")
              when { context.scope == "crm:export" };
            @id("everywhere-write") permit (principal, action, resource is Tessera::Audience)
              when { context.scope == "crm:write" };
            @id("never-delete") forbid (principal, action, resource) when { context.scope == "crm:delete" };
            "#,
        )
        .unwrap();
        assert_eq!(policy.by_audience.len(), 2, "two audiences are named in policy heads");
        let (s, l) = (vec!["crm:read", "crm:write", "crm:export", "crm:delete"], Labels::new());
        let p = principal("kubernetes", "agents");
        let scopes = Scopes::parse("crm:read crm:write crm:export crm:delete").unwrap();
        let on = |audience: &'static str| {
            let mut q = question(&p, 0, &s, &l);
            q.audience.id = audience;
            policy.decide(&q, &scopes).unwrap().iter().map(Decision::summary).collect::<Vec<_>>()
        };
        // The CRM's own permit and the unscoped ones; nothing of the mail audience's.
        assert_eq!(
            on("https://crm.example"),
            [
                "crm:read=allow:crm-read",
                "crm:write=allow:everywhere-write",
                "crm:export=deny:-",
                "crm:delete=deny:never-delete"
            ]
        );
        // The mail audience's `in` permit and its forbid, and the unscoped ones.
        assert_eq!(
            on("https://mail.example"),
            [
                "crm:read=allow:mail-all",
                "crm:write=allow:everywhere-write,mail-all",
                "crm:export=deny:mail-forbid-export",
                "crm:delete=deny:never-delete"
            ]
        );
        // An audience no policy names: only the unscoped policies apply.
        assert_eq!(
            on("https://other.example"),
            [
                "crm:read=deny:-",
                "crm:write=allow:everywhere-write",
                "crm:export=deny:-",
                "crm:delete=deny:never-delete"
            ]
        );
    }

    #[test]
    fn duplicate_or_empty_ids_and_templates_are_refused() {
        let dup = Policy::new(
            r#"@id("a") permit (principal, action, resource); @id("a") forbid (principal, action, resource);"#,
        )
        .unwrap_err();
        assert!(dup.iter().any(|p| p.contains("`a`")), "{dup:?}");
        assert!(Policy::new(r#"@id("") permit (principal, action, resource);"#).is_err());
        let template = Policy::new("permit (principal == ?principal, action, resource);").unwrap_err();
        assert!(template[0].contains("templates"), "{template:?}");
    }

    #[test]
    fn an_erroring_forbid_refuses_rather_than_allows() {
        // Cedar skips a policy whose evaluation errors (here: integer overflow at depth 2), which for a
        // `forbid` would allow. The broker refuses instead, and says which policy failed.
        let policy = Policy::new(
            r#"permit (principal, action, resource);
               @id("overflows") forbid (principal, action, resource) when { context.depth * 9223372036854775807 > 0 };"#,
        )
        .unwrap();
        let (s, l) = (crm_scopes(), Labels::new());
        let p = principal("kubernetes", "agents");
        let read = Scopes::parse("crm:read").unwrap();
        assert_eq!(policy.allowed(&question(&p, 0, &s, &l), &read).unwrap(), "crm:read", "no error, no forbid");
        let d = policy.decide(&question(&p, 2, &s, &l), &read).unwrap();
        assert!(!d[0].allowed, "error: refused");
        assert_eq!(d[0].summary(), "crm:read=error:overflows");
    }

    #[test]
    fn audiences_labels_spiffe_ids_chain_ttl_and_time_are_visible() {
        let policy = Policy::new(
            r#"
            @id("labelled") permit (principal, action, resource)
            when { principal.hasTag("namespace") && resource.hasTag("namespaces") &&
                   resource.getTag("namespaces").contains(principal.getTag("namespace")) &&
                   resource.scopes.contains(context.scope) && context.requested_ttl <= resource.max_ttl &&
                   context.now > 0 };
            @id("spiffe") permit (principal, action, resource)
            when { principal has spiffe && principal.spiffe.trust_domain == "td.example" &&
                   principal.spiffe.path like "/ns/agents/*" && context.requested_ttl <= 60 };
            @id("chain") forbid (principal, action, resource)
            when { !["kubernetes"].containsAll(context.chain_issuers) };
            @id("purpose") forbid (principal, action, resource)
            when { context has purpose && context.purpose == "exfiltrate" };
            "#,
        )
        .unwrap();
        let s = crm_scopes();
        let labels: Labels = [("namespaces".to_string(), ["agents".to_string()].into())].into();
        let none = Labels::new();
        let read = Scopes::parse("crm:read").unwrap();
        let p = principal("kubernetes", "agents");
        assert_eq!(policy.allowed(&question(&p, 0, &s, &labels), &read).unwrap(), "crm:read");
        assert!(policy.allowed(&question(&p, 0, &s, &none), &read).unwrap().is_empty(), "no label, no grant");
        let mut long = question(&p, 0, &s, &labels);
        long.requested_ttl = 301;
        assert!(policy.allowed(&long, &read).unwrap().is_empty(), "longer than the audience allows");
        let mut q = question(&p, 1, &s, &labels);
        q.chain = vec![Principal { issuer: "github".into(), ..principal("github", "x") }];
        assert_eq!(policy.decide(&q, &read).unwrap()[0].summary(), "crm:read=deny:chain");
        q.chain = vec![principal("kubernetes", "agents")];
        q.purpose = Some("exfiltrate");
        assert_eq!(policy.decide(&q, &read).unwrap()[0].summary(), "crm:read=deny:purpose");

        let svid = Principal {
            issuer: "spiffe".into(),
            iss: "spiffe://td.example".into(),
            sub: "spiffe://td.example/ns/agents/sa/summariser".into(),
            attributes: BTreeMap::new(),
            spiffe: SpiffeId::parse("spiffe://td.example/ns/agents/sa/summariser"),
        };
        let mut q = question(&svid, 0, &s, &none);
        q.requested_ttl = 60;
        assert_eq!(policy.decide(&q, &read).unwrap()[0].summary(), "crm:read=allow:spiffe");
        q.requested_ttl = 61;
        assert!(!policy.decide(&q, &read).unwrap()[0].allowed);
    }

    #[test]
    fn spiffe_ids_split_into_trust_domain_and_path() {
        let id = SpiffeId::parse("spiffe://td.example/ns/a").unwrap();
        assert_eq!((id.trust_domain.as_str(), id.path.as_str()), ("td.example", "/ns/a"));
        assert_eq!(SpiffeId::parse("spiffe://td.example").unwrap().path, "");
        assert!(SpiffeId::parse("spiffe:///x").is_none());
        assert!(SpiffeId::parse("https://td.example/x").is_none());
    }

    #[test]
    fn the_default_policy_validates_and_grants_upstream_nothing() {
        let policy = Policy::new(DEFAULT_POLICY).unwrap();
        let (s, l) = (crm_scopes(), Labels::new());
        let p = principal("kubernetes", "agents");
        let read = Scopes::parse("crm:read").unwrap();
        assert!(policy.allowed(&question(&p, 0, &s, &l), &read).unwrap().is_empty());
        let mut q = question(&p, 0, &s, &l);
        q.subject_is_tessera_token = true;
        assert_eq!(policy.allowed(&q, &read).unwrap(), "crm:read");
    }

    #[test]
    fn every_shipped_policy_validates() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("examples/policy.cedar"), root.join("tests/fixtures/policy.cedar")];
        let dir = root.join("examples/policies");
        let mut examples: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
            .collect();
        assert!(examples.len() >= 5, "examples/policies holds the examples");
        files.append(&mut examples);
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            if let Err(problems) = Policy::new(&source) {
                panic!("{}: {problems:?}", file.display());
            }
        }
    }

    #[test]
    fn policies_that_do_not_fit_the_schema_are_refused_with_every_problem() {
        let problems = Policy::new(
            r#"permit (principal, action, resource) when { context.nope == 1 };
               permit (principal, action, resource) when { principal.missing == "x" };"#,
        )
        .unwrap_err();
        assert!(problems.len() >= 2, "{problems:?}");
        assert!(Policy::new("permit (principal").is_err());
        // A type error: a Long compared with a String.
        let typed =
            Policy::new(r#"@id("typo") permit (principal, action, resource) when { context.requested_ttl == "300" };"#)
                .unwrap_err();
        assert!(typed.iter().any(|p| p.contains("typo")), "validation names the policy by its @id: {typed:?}");
    }

    #[test]
    fn approval_annotations_mark_grants_that_wait_for_a_human() {
        let policy = Policy::new(
            r#"
            @id("read") permit (principal, action, resource) when { context.scope == "crm:read" };
            @id("export") @approval("exports need a supervisor")
            permit (principal, action, resource) when { context.scope == "crm:export" || context.scope == "crm:write" };
            @id("write") permit (principal, action, resource) when { context.scope == "crm:write" };
            "#,
        )
        .unwrap();
        let principal = principal("kubernetes", "agents");
        let labels = Labels::default();
        let q = question(&principal, 0, &crm_scopes(), &labels);
        let decisions = policy.decide(&q, &Scopes::parse("crm:read crm:export crm:write").unwrap()).unwrap();
        let approval: Vec<(&str, &[String])> = decisions.iter().map(|d| (d.scope.as_str(), &d.approval[..])).collect();
        assert_eq!(approval[0], ("crm:read", &[][..]));
        assert_eq!(approval[1], ("crm:export", &["exports need a supervisor".to_string()][..]));
        // Another permit without the annotation grants outright.
        assert_eq!(approval[2], ("crm:write", &[][..]));
        assert_eq!(decisions[1].summary(), "crm:export=approval:export");

        for (source, expected) in [
            (r#"@id("f") @approval("why") forbid (principal, action, resource);"#, "marks a `permit`"),
            (r#"@id("p") @approval("") permit (principal, action, resource);"#, "needs a reason"),
        ] {
            let problems = Policy::new(source).unwrap_err().join("\n");
            assert!(problems.contains(expected), "{problems}");
        }
    }
}
