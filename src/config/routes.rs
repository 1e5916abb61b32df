//! `[[routes]]`: which audience and scopes a gateway's path needs, for forward-auth when the gateway does not
//! name them itself (`X-Tessera-Audience`, `X-Tessera-Scope`).

use serde::Deserialize;

use super::Problems;
use crate::catalog::{Audience, Route};
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
}

pub(super) fn build(builders: Vec<RouteBuilder>, audiences: &[Audience], problems: &mut Problems) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in builders.into_iter().enumerate() {
        let at = format!("routes[{i}] ({})", r.path_prefix);
        if !r.path_prefix.starts_with('/') || r.path_prefix.contains(|c: char| c.is_whitespace() || c.is_control()) {
            problems.push(format!("{at}: `path_prefix` must start with `/` and hold no spaces"));
        }
        if routes.iter().any(|x| x.path_prefix == r.path_prefix) {
            problems.push(format!("{at}: duplicate `path_prefix`"));
        }
        let Some(audience) = audiences.iter().find(|a| a.id == r.audience) else {
            problems.push(format!("{at}: `audience` `{}` is not in the catalog", r.audience));
            continue;
        };
        let scopes = match Scopes::from_tokens(&r.scopes) {
            Ok(scopes) => scopes,
            Err(_) => {
                problems.push(format!("{at}: `scopes` must be scope tokens (RFC 6749 §3.3)"));
                continue;
            }
        };
        for scope in scopes.iter().filter(|s| !audience.scopes.contains(s)) {
            problems.push(format!("{at}: scope `{scope}` is not offered by `{}`", audience.id));
        }
        routes.push(Route { path_prefix: r.path_prefix, audience: r.audience, scopes });
    }
    routes
}
