//! `[[audiences]]`: the catalog of downstream APIs tokens are issued for.

use serde::Deserialize;

use super::{Context, Problems};
use crate::catalog::{Audience, Grant, SenderConstraint};
use crate::policy::Labels;
use crate::rar::{DetailType, Narrowing, Schema};
use crate::scopes::Scopes;

/// A token's longest life for an audience that says nothing, in seconds.
pub const DEFAULT_AUDIENCE_MAX_TTL: u64 = 300;
/// The longest audience id accepted.
const MAX_AUDIENCE_BYTES: usize = 512;

/// One `[[audiences]]` entry as read; see docs/config.md `[[audiences]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudienceBuilder {
    /// The audience, an absolute URI without a fragment: the issued token's `aud`; required.
    pub id: String,
    /// The scopes that may be issued for it (RFC 6749 §3.3 scope tokens); at least one.
    pub scopes: Vec<String>,
    /// The longest life of a token for it, in seconds (default 300, at most 86400).
    pub max_ttl: Option<u64>,
    /// Clients that may introspect this audience's tokens; empty: every client allowed to introspect.
    pub introspect_clients: Vec<String>,
    /// The resource's public URL for RFC 9728 metadata, when it differs from `id`.
    pub resource_url: Option<String>,
    /// `none` (default), `dpop`, `mtls` or `any`: whether its tokens must be sender-constrained, and how.
    pub sender_constraint: Option<String>,
    /// Label name → a string or an array of strings, read by policy as the audience's tags (default none).
    pub labels: std::collections::BTreeMap<String, LabelValues>,
    /// `partial` (default) or `strict`: whether an exchange that policy allows only in part is issued the
    /// allowed scopes or refused with `invalid_scope`.
    pub grant: Option<String>,
    /// The RFC 9396 `authorization_details` types its tokens may carry (default none).
    pub authorization_details: Vec<DetailTypeBuilder>,
}

/// One `[[audiences.authorization_details]]` entry: a detail type, its schema and how its fields narrow.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetailTypeBuilder {
    /// The entries' `type`; required, unique per audience.
    #[serde(rename = "type")]
    pub kind: String,
    /// The JSON Schema (subset, see docs/rar.md) of an entry, as an inline table.
    pub schema: Option<serde_json::Value>,
    /// Or the path of a JSON file holding it (relative to the config's folder).
    pub schema_file: Option<std::path::PathBuf>,
    /// Field → `subset`, `equal` or `at_most`: how a re-exchange may narrow it (defaults: docs/rar.md).
    pub narrowing: std::collections::BTreeMap<String, String>,
}

/// The most detail types per audience.
const MAX_DETAIL_TYPES: usize = 32;

fn detail_types(given: Vec<DetailTypeBuilder>, at: &str, cx: &Context<'_>, problems: &mut Problems) -> Vec<DetailType> {
    let mut types: Vec<DetailType> = Vec::new();
    if given.len() > MAX_DETAIL_TYPES {
        problems.push(format!("{at}: at most {MAX_DETAIL_TYPES} `authorization_details` types"));
    }
    for (i, d) in given.into_iter().enumerate() {
        let at = format!("{at}: authorization_details[{i}] ({})", d.kind);
        if d.kind.is_empty() || d.kind.len() > MAX_LABEL_BYTES || d.kind.contains(char::is_control) {
            problems.push(format!("{at}: `type` must be 1 to {MAX_LABEL_BYTES} bytes"));
        }
        if types.iter().any(|t| t.name == d.kind) {
            problems.push(format!("{at}: duplicate `type`"));
        }
        let schema = match (d.schema, d.schema_file) {
            (Some(schema), None) => Some(schema),
            (None, Some(file)) => {
                let path = cx.path(&file);
                match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string()))
                {
                    Ok(schema) => Some(schema),
                    Err(e) => {
                        problems.push(format!("{at}: `schema_file` {}: {e}", path.display()));
                        None
                    }
                }
            }
            _ => {
                problems.push(format!("{at}: exactly one of `schema` or `schema_file`"));
                None
            }
        };
        let schema = match schema.map(|s| Schema::compile(&s)) {
            Some(Ok(schema)) => schema,
            Some(Err(e)) => {
                problems.push(format!("{at}: `schema`{e}"));
                Schema::default()
            }
            None => Schema::default(),
        };
        let mut narrowing = std::collections::BTreeMap::new();
        for (field, how) in d.narrowing {
            match Narrowing::parse(&how) {
                Some(n) if field != "type" => {
                    narrowing.insert(field, n);
                }
                _ => problems.push(format!(
                    "{at}: narrowing.{field} must be `subset`, `equal` or `at_most` (and `type` is always equal)"
                )),
            }
        }
        types.push(DetailType { name: d.kind, schema, narrowing });
    }
    types
}

/// A label's value in the config: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum LabelValues {
    /// `namespaces = "agents"`.
    One(String),
    /// `namespaces = ["agents", "support"]`.
    Many(Vec<String>),
}

/// The longest label name or value, and the most labels or values per audience: labels are for policy to
/// match on, not for data.
const MAX_LABEL_BYTES: usize = 128;
const MAX_LABELS: usize = 32;

fn labels(given: std::collections::BTreeMap<String, LabelValues>, at: &str, problems: &mut Problems) -> Labels {
    let mut labels = Labels::new();
    let ok = |s: &str| !s.is_empty() && s.len() <= MAX_LABEL_BYTES && !s.contains(char::is_control);
    if given.len() > MAX_LABELS {
        problems.push(format!("{at}: at most {MAX_LABELS} `labels`"));
    }
    for (name, values) in given {
        let values = match values {
            LabelValues::One(v) => vec![v],
            LabelValues::Many(vs) => vs,
        };
        if !ok(&name) || values.is_empty() || values.len() > MAX_LABELS || !values.iter().all(|v| ok(v)) {
            problems.push(format!(
                "{at}: labels.{name}: a label is a name and one or more values, each 1 to {MAX_LABEL_BYTES} bytes                  without control characters"
            ));
            continue;
        }
        labels.insert(name, values.into_iter().collect());
    }
    labels
}

pub(super) fn build(builders: Vec<AudienceBuilder>, cx: &Context<'_>, problems: &mut Problems) -> Vec<Audience> {
    let mut audiences: Vec<Audience> = Vec::new();
    for (i, a) in builders.into_iter().enumerate() {
        let at = format!("audiences[{i}] ({})", a.id);
        if !a.id.contains("://")
            || a.id.contains('#')
            || a.id.len() > MAX_AUDIENCE_BYTES
            || a.id.contains(char::is_whitespace)
            || a.id.contains(char::is_control)
        {
            problems.push(format!("{at}: `id` must be an absolute URI without a fragment"));
        }
        if a.id == cx.broker_issuer {
            problems.push(format!("{at}: the broker itself is not a catalogued audience"));
        }
        // The one scope rule (RFC 6749 §3.3 characters): a catalogued scope is one a request can name.
        let scopes = Scopes::from_tokens(&a.scopes).unwrap_or_default();
        if scopes.is_empty() {
            problems.push(format!("{at}: `scopes` must be a non-empty list of scope tokens (RFC 6749 §3.3)"));
        }
        let max_ttl = a.max_ttl.unwrap_or(DEFAULT_AUDIENCE_MAX_TTL);
        if max_ttl == 0 || max_ttl > super::broker::MAX_TTL {
            problems.push(format!("{at}: `max_ttl` must be between 1 and {} seconds", super::broker::MAX_TTL));
        }
        if audiences.iter().any(|x| x.id == a.id) {
            problems.push(format!("{at}: duplicate audience"));
        }
        if a.resource_url.as_deref().is_some_and(|u| !super::is_https_like(u) || u.contains('#')) {
            problems.push(format!("{at}: `resource_url` must be an http(s) URL without a fragment"));
        }
        let sender_constraint = match a.sender_constraint.as_deref() {
            None => SenderConstraint::None,
            Some(name) => SenderConstraint::parse(name).unwrap_or_else(|| {
                problems.push(format!("{at}: `sender_constraint` must be one of none, dpop, mtls, any"));
                SenderConstraint::None
            }),
        };
        let grant = match a.grant.as_deref() {
            None => Grant::Partial,
            Some(name) => Grant::parse(name).unwrap_or_else(|| {
                problems.push(format!("{at}: `grant` must be `partial` or `strict`"));
                Grant::Partial
            }),
        };
        let labels = labels(a.labels, &at, problems);
        let detail_types = detail_types(a.authorization_details, &at, cx, problems);
        audiences.push(Audience {
            id: a.id,
            scopes,
            max_ttl,
            introspect_clients: a.introspect_clients.into_iter().collect(),
            resource_url: a.resource_url,
            sender_constraint,
            labels,
            grant,
            detail_types,
        });
    }
    audiences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_one(toml: &str) -> (Vec<Audience>, Problems) {
        #[derive(Deserialize)]
        struct Doc {
            audiences: Vec<AudienceBuilder>,
        }
        use figment::providers::Format as _;
        let doc: Doc = figment::Figment::new().merge(figment::providers::Toml::string(toml)).extract().unwrap();
        let mut problems = Problems::new();
        let cx = Context { base_dir: std::path::Path::new("."), broker_issuer: "https://tessera.test" };
        (build(doc.audiences, &cx, &mut problems), problems)
    }

    #[test]
    fn labels_take_one_value_or_several_and_grant_is_partial_unless_strict() {
        let (audiences, problems) = build_one(
            r#"
            [[audiences]]
            id = "https://a.example"
            scopes = ["a:read"]
            labels = { namespaces = ["agents", "support"], tier = "internal" }
            grant = "strict"
            [[audiences]]
            id = "https://b.example"
            scopes = ["b:read"]
            "#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(audiences[0].grant, Grant::Strict);
        assert_eq!(audiences[1].grant, Grant::Partial, "today's behaviour by default");
        let values = |k: &str| audiences[0].labels[k].iter().cloned().collect::<Vec<_>>();
        assert_eq!(values("namespaces"), ["agents", "support"]);
        assert_eq!(values("tier"), ["internal"]);
        assert!(audiences[1].labels.is_empty());
    }

    #[test]
    fn bad_labels_and_grants_are_refused() {
        let (_, problems) = build_one(
            r#"
            [[audiences]]
            id = "https://a.example"
            scopes = ["a:read"]
            labels = { empty = [], blank = "" }
            grant = "all-or-nothing"
            "#,
        );
        let all = problems.join("\n");
        assert!(all.contains("`grant` must be `partial` or `strict`"), "{all}");
        assert!(all.contains("labels.empty") && all.contains("labels.blank"), "{all}");
    }
}
