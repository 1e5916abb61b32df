//! Policy: the Cedar engine decides, per requested scope, whether a principal acting through its actor chain
//! may get that scope on an audience for a task.
//!
//! Policy sits after the invariants: it can refuse a scope the invariants allow, never grant one they forbid.
//! Decisions are per scope, and every evaluation error counts as a refusal. Requests are modelled with few
//! generic policies reading entity data (principal tags from the issuer's claim mapping), because Cedar's
//! cost grows with the number of policies, not with the size of the data.

use std::collections::BTreeMap;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::error::{Error, Result};
use crate::scopes::Scopes;

/// The schema every policy is validated against (`policy/schema.cedarschema`).
pub const SCHEMA: &str = include_str!("../policy/schema.cedarschema");
/// The policy used when the config names none (`policy/default.cedar`).
pub const DEFAULT_POLICY: &str = include_str!("../policy/default.cedar");

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
}

/// Everything one exchange tells policy, apart from the scope being decided.
#[derive(Debug)]
pub struct Question<'a> {
    /// The subject: the Cedar `principal`.
    pub principal: &'a Principal,
    /// The actor of this exchange, when an `actor_token` was given (`context.actor`).
    pub actor: Option<&'a Principal>,
    /// The target audience (the Cedar `resource`); `broker.issuer` for a task token.
    pub audience: &'a str,
    /// The task the token is bound to (`context.task_id`).
    pub task_id: &'a str,
    /// The calling client (`context.client_id`).
    pub client_id: &'a str,
    /// Actors in the `act` chain of the token being issued; 0: no delegation (`context.depth`).
    pub depth: usize,
    /// The `sub` of every actor in that chain, the acting one included (`context.actors`).
    pub actors: Vec<&'a str>,
    /// The subject token is one of tessera's own: a re-exchange (`context.subject_is_tessera_token`).
    pub subject_is_tessera_token: bool,
    /// The audience is tessera itself (`context.task_token`).
    pub task_token: bool,
}

/// A validated Cedar policy set with its schema, consulted once per requested scope.
pub struct Policy {
    policies: PolicySet,
    schema: Schema,
    authorizer: Authorizer,
    principal_type: EntityTypeName,
    audience_type: EntityTypeName,
    action: EntityUid,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("policies", &self.policies.policies().count()).finish()
    }
}

impl Policy {
    /// Parses `source` and validates it against the schema; every problem is reported.
    pub fn new(source: &str) -> std::result::Result<Policy, Vec<String>> {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).map_err(|e| vec![format!("schema: {e}")])?;
        let policies = PolicySet::from_str(source).map_err(|e| {
            let mut problems = vec![format!("policy does not parse: {e}")];
            problems.extend(miette_causes(&e));
            problems
        })?;
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        let problems: Vec<String> = validation.validation_errors().map(|e| format!("policy: {e}")).collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        let name = |s: &str| EntityTypeName::from_str(s).map_err(|e| vec![e.to_string()]);
        Ok(Policy {
            policies,
            schema,
            authorizer: Authorizer::new(),
            principal_type: name("Tessera::Principal")?,
            audience_type: name("Tessera::Audience")?,
            action: EntityUid::from_str(r#"Tessera::Action::"exchange""#).map_err(|e| vec![e.to_string()])?,
        })
    }

    fn principal_uid(&self, p: &Principal) -> EntityUid {
        EntityUid::from_type_name_and_id(self.principal_type.clone(), EntityId::new(format!("{}|{}", p.iss, p.sub)))
    }

    fn principal_entity(&self, p: &Principal) -> Result<Entity> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        Entity::new_with_tags(
            self.principal_uid(p),
            [("issuer".to_string(), s(&p.issuer)), ("iss".to_string(), s(&p.iss)), ("sub".to_string(), s(&p.sub))],
            [],
            p.attributes.iter().map(|(k, v)| (k.clone(), s(v))),
        )
        .map_err(|e| Error::internal(format!("policy entity: {e}")))
    }

    /// Decides each scope; returns the scopes allowed, in the order asked.
    #[tracing::instrument(name = "policy", skip_all)]
    pub fn allowed(&self, q: &Question<'_>, scopes: &Scopes) -> Result<Scopes> {
        let mut entities = vec![self.principal_entity(q.principal)?];
        // One entity per principal: an actor that is the subject under other tags must not make a duplicate.
        if let Some(actor) = q.actor.filter(|a| (&a.iss, &a.sub) != (&q.principal.iss, &q.principal.sub)) {
            entities.push(self.principal_entity(actor)?);
        }
        let entities = Entities::from_entities(entities, Some(&self.schema))
            .map_err(|e| Error::internal(format!("policy entities: {e}")))?;
        let principal = self.principal_uid(q.principal);
        let resource = EntityUid::from_type_name_and_id(self.audience_type.clone(), EntityId::new(q.audience));
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let mut allowed = Vec::new();
        for scope in scopes.iter() {
            let mut context = vec![
                ("scope".to_string(), s(scope)),
                ("task_id".to_string(), s(q.task_id)),
                ("client_id".to_string(), s(q.client_id)),
                ("depth".to_string(), RestrictedExpression::new_long(q.depth as i64)),
                ("actors".to_string(), RestrictedExpression::new_set(q.actors.iter().map(|a| s(a)))),
                ("subject_is_tessera_token".to_string(), RestrictedExpression::new_bool(q.subject_is_tessera_token)),
                ("task_token".to_string(), RestrictedExpression::new_bool(q.task_token)),
            ];
            if let Some(actor) = q.actor {
                context.push(("actor".to_string(), RestrictedExpression::new_entity_uid(self.principal_uid(actor))));
            }
            let context = Context::from_pairs(context).map_err(|e| Error::internal(format!("policy context: {e}")))?;
            let request = cedar_policy::Request::new(
                principal.clone(),
                self.action.clone(),
                resource.clone(),
                context,
                Some(&self.schema),
            )
            .map_err(|e| Error::internal(format!("policy request: {e}")))?;
            let response = self.authorizer.is_authorized(&request, &self.policies, &entities);
            // Cedar skips a policy whose evaluation errors; for a `forbid` that would mean allowing. Any error
            // therefore refuses the scope.
            let errored = response.diagnostics().errors().next().is_some();
            if errored {
                tracing::warn!(scope, "policy evaluation error; the scope is refused");
            }
            if response.decision() == Decision::Allow && !errored {
                allowed.push(scope);
            }
        }
        Ok(scopes.filter(|s| allowed.contains(&s)))
    }
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
        }
    }

    fn question<'a>(p: &'a Principal, depth: usize) -> Question<'a> {
        Question {
            principal: p,
            actor: None,
            audience: "https://crm.example",
            task_id: "t1",
            client_id: "demo",
            depth,
            actors: vec![],
            subject_is_tessera_token: false,
            task_token: false,
        }
    }

    const POLICY: &str = r#"
        permit (principal, action == Tessera::Action::"exchange", resource == Tessera::Audience::"https://crm.example")
        when { principal.issuer == "kubernetes" && principal.hasTag("namespace") &&
               principal.getTag("namespace") == "agents" && context.scope like "crm:*" };
        forbid (principal, action, resource) when { context.scope == "crm:export" && context.depth > 0 };
    "#;

    #[test]
    fn decides_per_scope_with_tags_and_depth() {
        let policy = Policy::new(POLICY).unwrap();
        let p = principal("kubernetes", "agents");
        let scopes = Scopes::parse("crm:read crm:export mail:send").unwrap();
        assert_eq!(policy.allowed(&question(&p, 0), &scopes).unwrap(), "crm:read crm:export");
        assert_eq!(policy.allowed(&question(&p, 1), &scopes).unwrap(), "crm:read");
        let other = principal("kubernetes", "default");
        assert!(policy.allowed(&question(&other, 0), &scopes).unwrap().is_empty());
    }

    #[test]
    fn an_erroring_forbid_refuses_rather_than_allows() {
        // Cedar skips a policy whose evaluation errors (here: integer overflow at depth 2), which for a
        // `forbid` would allow. The broker refuses instead.
        let policy = Policy::new(
            r#"permit (principal, action, resource);
               forbid (principal, action, resource) when { context.depth * 9223372036854775807 > 0 };"#,
        )
        .unwrap();
        let p = principal("kubernetes", "agents");
        let read = Scopes::parse("crm:read").unwrap();
        assert_eq!(policy.allowed(&question(&p, 0), &read).unwrap(), "crm:read", "no error, no forbid");
        assert!(policy.allowed(&question(&p, 2), &read).unwrap().is_empty(), "error: refused");
    }

    #[test]
    fn the_default_policy_validates_and_grants_upstream_nothing() {
        let policy = Policy::new(DEFAULT_POLICY).unwrap();
        let p = principal("kubernetes", "agents");
        let read = Scopes::parse("crm:read").unwrap();
        assert!(policy.allowed(&question(&p, 0), &read).unwrap().is_empty());
        let mut q = question(&p, 0);
        q.subject_is_tessera_token = true;
        assert_eq!(policy.allowed(&q, &read).unwrap(), "crm:read");
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
    }
}
