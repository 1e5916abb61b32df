//! `[[routes]]`: which audience and scopes a gateway's path needs, for forward-auth when the gateway does not
//! name them itself (`X-Tessera-Audience`, `X-Tessera-Scope`).

use serde::Deserialize;

use super::Problems;
use crate::catalog::{Audience, Route};
use crate::rar::Requirement;
use crate::scopes::Scopes;

/// One route: requests whose path starts with `path_prefix` need a token for `audience` with every one of
/// `scopes`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteBuilder {
    /// The path prefix, from `/`; the longest matching prefix wins.
    pub path_prefix: String,
    /// A catalogued audience.
    pub audience: String,
    /// Scopes the token must all hold; each offered by the audience.
    pub scopes: Vec<String>,
    /// What the token's RFC 9396 `authorization_details` must hold (default: nothing).
    pub authorization_details: Option<RequirementBuilder>,
}

/// A route's `authorization_details`: an entry of `type` the token must carry (see docs/rar.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequirementBuilder {
    /// The entry's `type`: one the route's audience accepts.
    #[serde(rename = "type")]
    pub kind: String,
    /// Actions the entry's `actions` must all hold (default none).
    pub actions: Vec<String>,
    /// Field → the string the entry's field must equal; `{name}` is the path parameter `name` of
    /// `path_prefix` (default none).
    pub fields: std::collections::BTreeMap<String, String>,
    /// Whether the original request's method adds its action (`GET` → `read`, …; default true).
    pub map_methods: Option<bool>,
}

pub(super) fn build(builders: Vec<RouteBuilder>, audiences: &[Audience], problems: &mut Problems) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in builders.into_iter().enumerate() {
        let at = format!("routes[{i}] ({})", r.path_prefix);
        if routes.iter().any(|x| x.path_prefix == r.path_prefix) {
            problems.push(format!("{at}: duplicate `path_prefix`"));
        }
        if let Some(route) = build_route(r, &at, audiences, problems) {
            routes.push(route);
        }
    }
    routes
}

/// One route, validated against the catalog; problems are reported under `at` (the proxy's routes take the
/// same rules).
pub(super) fn build_route(r: RouteBuilder, at: &str, audiences: &[Audience], problems: &mut Problems) -> Option<Route> {
    {
        if !r.path_prefix.starts_with('/') || r.path_prefix.contains(|c: char| c.is_whitespace() || c.is_control()) {
            problems.push(format!("{at}: `path_prefix` must start with `/` and hold no spaces"));
        }
        let Some(audience) = audiences.iter().find(|a| a.id == r.audience) else {
            problems.push(format!("{at}: `audience` `{}` is not in the catalog", r.audience));
            return None;
        };
        let scopes = match Scopes::from_tokens(&r.scopes) {
            Ok(scopes) => scopes,
            Err(_) => {
                problems.push(format!("{at}: `scopes` must be scope tokens (RFC 6749 §3.3)"));
                return None;
            }
        };
        for scope in scopes.iter().filter(|s| !audience.scopes.contains(s)) {
            problems.push(format!("{at}: scope `{scope}` is not offered by `{}`", audience.id));
        }
        let params: Vec<&str> =
            r.path_prefix.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        if r.path_prefix.split('/').any(|s| (s.contains('{') || s.contains('}')) && !s.starts_with('{'))
            || params.iter().any(|p| p.is_empty() || p.contains(['{', '}']))
        {
            problems.push(format!("{at}: a path parameter is a whole segment, `{{name}}`"));
        }
        let details = match r.authorization_details {
            None => None,
            Some(d) => {
                if !audience.detail_types.iter().any(|t| t.name == d.kind) {
                    problems.push(format!(
                        "{at}: authorization_details.type `{}` is not accepted by `{}`",
                        d.kind, audience.id
                    ));
                }
                for (field, value) in &d.fields {
                    if let Some(name) = value.strip_prefix('{').and_then(|v| v.strip_suffix('}'))
                        && !params.contains(&name)
                    {
                        problems.push(format!(
                            "{at}: authorization_details.fields.{field}: `path_prefix` has no `{{{name}}}`"
                        ));
                    }
                }
                Some(Requirement {
                    kind: d.kind,
                    actions: d.actions,
                    fields: d.fields,
                    map_methods: d.map_methods.unwrap_or(true),
                })
            }
        };
        Some(Route { path_prefix: r.path_prefix, audience: r.audience, scopes, details })
    }
}
