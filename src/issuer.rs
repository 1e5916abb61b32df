//! Trusted issuers: who may vouch for a workload, and how their assertions are verified.
//!
//! An assertion is routed to its issuer by `iss` (or, for a SPIFFE JWT-SVID without one, by the trust domain
//! of its `sub`), checked against that issuer's size limit and algorithms, verified with a key pinned to one
//! algorithm, and its time claims and audience checked with the issuer's leeway, all against a `now` the
//! caller passes in. Then its claims are mapped to a [`Principal`]. tessera's own tokens are verified by the
//! same path with the broker's keyring, so a token can be exchanged again for a narrower one.
//!
//! JWKS come inline, from a file, or from a URL. File and URL sets are reloaded when a token names an unknown
//! `kid` (at most once per `min_refresh_interval`, with concurrent callers waiting on one reload), URL sets
//! also every `refresh_interval`; a failed reload keeps the keys already held.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::metrics::Metrics;
use crate::policy::Principal;
use crate::token::jws::{self, Algorithm, JwsError};
use crate::token::keys::{JwkSet, KeySet};
use crate::token::{AccessClaims, Keyring};

/// Where an issuer's keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    Inline(JwkSet),
    File(PathBuf),
    Url(String),
}

/// One trusted upstream issuer, as validated from the config.
#[derive(Clone, Debug)]
pub struct IssuerSpec {
    /// Short name used in policies and logs (`kubernetes`).
    pub name: String,
    /// The `iss` its tokens carry. `None` only for a SPIFFE trust domain whose SVIDs carry no `iss`.
    pub issuer: Option<String>,
    pub spiffe_trust_domain: Option<String>,
    pub jwks: JwksSource,
    /// The `aud` an assertion must carry to be accepted here (the broker's identifier by default).
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub leeway: u64,
    pub max_token_bytes: usize,
    pub subject_claim: String,
    /// Principal tag name → JSON pointer into the claims (`/kubernetes.io/namespace`).
    pub attributes: BTreeMap<String, String>,
    pub min_refresh_interval: Duration,
    pub refresh_interval: Duration,
    /// Each assertion may be exchanged once: it must carry a `jti`, and a replay is refused.
    pub single_use: bool,
    /// A file holding a bearer token sent when fetching `jwks_url`, read at every fetch (a Kubernetes
    /// projected service-account token rotates): the API server's `/openid/v1/jwks` wants one.
    pub jwks_bearer_token_file: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM) for `jwks_url`, such as the cluster CA.
    pub jwks_ca_pem: Option<Vec<u8>>,
}

impl IssuerSpec {
    /// The identifier principals of this issuer are known by: its `iss`, or `spiffe://<trust domain>`.
    pub fn id(&self) -> String {
        match (&self.issuer, &self.spiffe_trust_domain) {
            (Some(iss), _) => iss.clone(),
            (None, Some(td)) => format!("spiffe://{td}"),
            (None, None) => String::new(),
        }
    }
}

/// Why an assertion was refused. Texts are safe to return: none quotes the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Jws(#[from] JwsError),
    #[error("is from an issuer that is not trusted")]
    UnknownIssuer,
    #[error("is signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("has expired")]
    Expired,
    #[error("is not valid yet")]
    NotYetValid,
    #[error("is issued in the future")]
    IssuedInFuture,
    #[error("is not for this broker (audience)")]
    WrongAudience,
    #[error("has no valid `{0}` claim")]
    MissingClaim(&'static str),
    #[error("has a `typ` this issuer does not use")]
    WrongType,
}

/// An issuer's keys and the state of their reloading.
struct Upstream {
    spec: IssuerSpec,
    /// This issuer's own HTTP client, when it trusts an extra CA.
    http: Option<reqwest::Client>,
    keys: RwLock<Arc<KeySet>>,
    /// When the keys were last (re)loaded on demand; held while a reload runs so concurrent callers share it.
    reload: tokio::sync::Mutex<Option<Instant>>,
}

impl Upstream {
    fn keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => Arc::clone(&k),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set_keys(&self, keys: KeySet) {
        match self.keys.write() {
            Ok(mut k) => *k = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
    }
}

/// Where a verified token came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An upstream issuer's assertion.
    Upstream,
    /// One of tessera's own tokens, with its claims.
    Broker(Box<AccessClaims>),
}

/// A verified assertion: its principal and the claims exchange needs.
#[derive(Clone, Debug)]
pub struct Verified {
    pub origin: Origin,
    pub principal: Principal,
    pub exp: u64,
    pub iat: Option<u64>,
    /// The scopes the token carries, when it carries any (`scope` string or `scp` array).
    pub scopes: Option<Vec<String>>,
    /// RFC 8693 §4.4 `may_act`: who may act for this subject, when the token says.
    pub may_act: Option<Value>,
    /// For a single-use assertion: the key that marks it spent, and until when it must be remembered.
    pub spend: Option<(String, u64)>,
}

pub struct Issuers {
    upstream: Vec<Arc<Upstream>>,
    by_iss: HashMap<String, usize>,
    by_trust_domain: HashMap<String, usize>,
    own_iss: String,
    own_keys: KeySet,
    own_leeway: u64,
    /// Tokens longer than this are refused before anything is decoded.
    max_token_bytes: usize,
    http: reqwest::Client,
    metrics: Metrics,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuers")
            .field("upstream", &self.upstream.iter().map(|u| &u.spec.name).collect::<Vec<_>>())
            .finish()
    }
}

/// The largest JWKS document fetched from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Own tokens are small; a larger one is not ours.
const OWN_MAX_TOKEN_BYTES: usize = 8 * 1024;

impl Issuers {
    /// `initial` holds the keys of inline and file sources, loaded while the config was validated.
    pub fn new(
        specs: Vec<(IssuerSpec, KeySet)>,
        keyring: &Keyring,
        own_iss: String,
        own_leeway: u64,
        metrics: Metrics,
    ) -> Issuers {
        let mut by_iss = HashMap::new();
        let mut by_trust_domain = HashMap::new();
        let mut max_token_bytes = OWN_MAX_TOKEN_BYTES;
        let upstream = specs
            .into_iter()
            .enumerate()
            .map(|(i, (spec, keys))| {
                if let Some(iss) = &spec.issuer {
                    by_iss.insert(iss.clone(), i);
                }
                if let Some(td) = &spec.spiffe_trust_domain {
                    by_trust_domain.insert(td.clone(), i);
                }
                max_token_bytes = max_token_bytes.max(spec.max_token_bytes);
                let http = spec.jwks_ca_pem.as_deref().and_then(|pem| {
                    let cert = reqwest::Certificate::from_pem(pem).ok()?;
                    http_client().add_root_certificate(cert).build().ok()
                });
                Arc::new(Upstream {
                    spec,
                    http,
                    keys: RwLock::new(Arc::new(keys)),
                    reload: tokio::sync::Mutex::new(None),
                })
            })
            .collect();
        let http = http_client().build().unwrap_or_default();
        Issuers {
            upstream,
            by_iss,
            by_trust_domain,
            own_iss,
            own_keys: keyring.verifying_keys().clone(),
            own_leeway,
            max_token_bytes,
            http,
            metrics,
        }
    }

    /// Fetches every URL-sourced JWKS once (at start). Failures are logged; those issuers start empty and
    /// are retried on demand.
    pub async fn warm_up(&self) {
        for up in &self.upstream {
            if matches!(up.spec.jwks, JwksSource::Url(_)) {
                self.reload(up).await;
            }
        }
    }

    /// Reloads each URL-sourced JWKS every `refresh_interval` of its issuer, until the returned tasks are
    /// aborted.
    pub fn spawn_refresh(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.upstream.len())
            .filter(|i| matches!(self.upstream[*i].spec.jwks, JwksSource::Url(_)))
            .map(|i| {
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let up = &this.upstream[i];
                    let mut tick = tokio::time::interval(up.spec.refresh_interval);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        this.reload(up).await;
                    }
                })
            })
            .collect()
    }

    async fn reload(&self, up: &Upstream) -> bool {
        let result = load_jwks(&up.spec, up.http.as_ref().unwrap_or(&self.http)).await;
        let attrs = [
            opentelemetry::KeyValue::new("issuer", up.spec.name.clone()),
            opentelemetry::KeyValue::new("result", if result.is_ok() { "ok" } else { "error" }),
        ];
        self.metrics.jwks_refreshes.add(1, &attrs);
        match result {
            Ok(keys) => {
                up.set_keys(keys);
                tracing::info!(issuer = %up.spec.name, "JWKS reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(issuer = %up.spec.name, %error, "JWKS reload failed; keeping the keys already held");
                false
            }
        }
    }

    /// Reloads an issuer's keys because a token named `kid`, which it does not have: at most once per
    /// `min_refresh_interval`, and once for all callers waiting at the same time.
    async fn reload_for_unknown_kid(&self, up: &Upstream, kid: &str) {
        if matches!(up.spec.jwks, JwksSource::Inline(_)) {
            return;
        }
        let mut last = up.reload.lock().await;
        if up.keys().has_kid(kid) {
            return;
        }
        if last.is_some_and(|t| t.elapsed() < up.spec.min_refresh_interval) {
            return;
        }
        *last = Some(Instant::now());
        self.reload(up).await;
    }

    /// Verifies `token` as of `now` (Unix seconds).
    #[tracing::instrument(name = "verify_token", skip_all)]
    pub async fn verify(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
        let parsed = jws::parse(token, self.max_token_bytes)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&parsed.payload).map_err(|_| JwsError::MalformedClaims)?;
        let iss = claims.get("iss").and_then(Value::as_str);
        if iss == Some(self.own_iss.as_str()) {
            return self.verify_own(&parsed, token.len(), claims, Some(now));
        }
        let up = self.route(iss, &claims).ok_or(TokenError::UnknownIssuer)?;
        let spec = &up.spec;
        if token.len() > spec.max_token_bytes {
            return Err(JwsError::Oversized(spec.max_token_bytes).into());
        }
        if !spec.algorithms.contains(&parsed.alg) {
            return Err(JwsError::AlgorithmNotAllowed.into());
        }
        let kid = parsed.header.kid.as_deref();
        let mut keys = up.keys();
        if keys.find(kid, parsed.alg).is_none()
            && let Some(kid) = kid
        {
            self.reload_for_unknown_kid(up, kid).await;
            keys = up.keys();
        }
        let key = keys.find(kid, parsed.alg).ok_or(TokenError::UnknownKey)?;
        parsed.verify(key)?;
        let exp = check_times(&claims, now, spec.leeway)?;
        if !audiences(&claims).any(|a| a == spec.audience) {
            return Err(TokenError::WrongAudience);
        }
        let sub = claims
            .get(&spec.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .ok_or(TokenError::MissingClaim("sub"))?;
        let attributes = spec
            .attributes
            .iter()
            .filter_map(|(tag, pointer)| {
                let v = claim_at(&claims, pointer)?;
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    _ => return None,
                };
                Some((tag.clone(), text))
            })
            .collect();
        let principal = Principal { issuer: spec.name.clone(), iss: spec.id(), sub: sub.to_string(), attributes };
        let iat = claims.get("iat").and_then(Value::as_u64);
        let spend = match spec.single_use {
            false => None,
            true => {
                let jti = claims
                    .get("jti")
                    .and_then(Value::as_str)
                    .filter(|j| !j.is_empty() && j.len() <= 256)
                    .ok_or(TokenError::MissingClaim("jti"))?;
                Some((crate::revocation::used_key(&spec.id(), jti), exp.saturating_add(spec.leeway)))
            }
        };
        Ok(Verified {
            spend,
            origin: Origin::Upstream,
            principal,
            exp,
            iat,
            scopes: scopes(&claims)?,
            may_act: claims.get("may_act").cloned(),
        })
    }

    fn route(&self, iss: Option<&str>, claims: &Map<String, Value>) -> Option<&Arc<Upstream>> {
        let index = match iss {
            Some(iss) => *self.by_iss.get(iss)?,
            None => {
                let sub = claims.get("sub")?.as_str()?;
                let domain = sub.strip_prefix("spiffe://")?.split('/').next()?;
                *self.by_trust_domain.get(domain)?
            }
        };
        self.upstream.get(index)
    }

    /// Verifies one of tessera's own tokens; with `now`, also its times.
    fn verify_own(
        &self,
        parsed: &jws::Unverified<'_>,
        len: usize,
        claims: Map<String, Value>,
        now: Option<u64>,
    ) -> Result<Verified, TokenError> {
        if len > OWN_MAX_TOKEN_BYTES {
            return Err(JwsError::Oversized(OWN_MAX_TOKEN_BYTES).into());
        }
        if parsed.header.typ.as_deref() != Some("at+jwt") {
            return Err(TokenError::WrongType);
        }
        let key = self.own_keys.find(parsed.header.kid.as_deref(), parsed.alg).ok_or(TokenError::UnknownKey)?;
        parsed.verify(key)?;
        if let Some(now) = now {
            check_times(&claims, now, self.own_leeway)?;
        }
        let access: AccessClaims =
            serde_json::from_value(Value::Object(claims)).map_err(|_| TokenError::Jws(JwsError::MalformedClaims))?;
        // The subject's issuer must still be trusted: removing an issuer from the config ends every token
        // derived from its assertions at their next exchange.
        let spec = self
            .upstream
            .iter()
            .map(|u| &u.spec)
            .find(|s| s.id() == access.sub_iss)
            .ok_or(TokenError::UnknownIssuer)?;
        let principal = Principal {
            issuer: spec.name.clone(),
            iss: access.sub_iss.clone(),
            sub: access.sub.clone(),
            attributes: access.sub_attrs.clone(),
        };
        let scopes = Some(access.scopes().map(str::to_string).collect());
        Ok(Verified {
            exp: access.exp,
            iat: Some(access.iat),
            origin: Origin::Broker(Box::new(access)),
            principal,
            scopes,
            may_act: None,
            spend: None,
        })
    }

    /// Verifies the signature of one of tessera's own tokens, whatever its times (to revoke it).
    pub fn verify_own_ignoring_time(&self, token: &str) -> Result<Verified, TokenError> {
        let parsed = jws::parse(token, OWN_MAX_TOKEN_BYTES)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&parsed.payload).map_err(|_| JwsError::MalformedClaims)?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.own_iss.as_str()) {
            return Err(TokenError::UnknownIssuer);
        }
        self.verify_own(&parsed, token.len(), claims, None)
    }

    /// The identifier of a configured upstream issuer named by its `iss`, its SPIFFE prefix or its name.
    pub fn issuer_id(&self, name_or_id: &str) -> Option<String> {
        self.upstream.iter().map(|u| &u.spec).find(|s| s.name == name_or_id || s.id() == name_or_id).map(IssuerSpec::id)
    }

    /// The upstream issuer names, for diagnostics.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.upstream.iter().map(|u| u.spec.name.as_str())
    }
}

/// Checks `exp` (required), `nbf` and `iat` (when present) with `leeway`; returns `exp`.
fn check_times(claims: &Map<String, Value>, now: u64, leeway: u64) -> Result<u64, TokenError> {
    let number = |name: &'static str| -> Result<Option<u64>, TokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or(TokenError::MissingClaim(name)),
        }
    };
    let exp = number("exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if number("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(TokenError::NotYetValid);
    }
    if number("iat")?.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(TokenError::IssuedInFuture);
    }
    Ok(exp)
}

/// A JSON pointer (RFC 6901) into the claims set.
fn claim_at<'a>(claims: &'a Map<String, Value>, pointer: &str) -> Option<&'a Value> {
    let rest = pointer.strip_prefix('/')?;
    let (first, tail) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    let value = claims.get(&first.replace("~1", "/").replace("~0", "~"))?;
    if tail.is_empty() { Some(value) } else { value.pointer(tail) }
}

fn audiences(claims: &Map<String, Value>) -> impl Iterator<Item = &str> {
    let (one, many) = match claims.get("aud") {
        Some(Value::String(s)) => (Some(s.as_str()), None),
        Some(Value::Array(a)) => (None, Some(a.iter().filter_map(Value::as_str))),
        _ => (None, None),
    };
    one.into_iter().chain(many.into_iter().flatten())
}

/// The scopes a token carries: `scope` (space-delimited, RFC 8693 §4.2) or `scp` (a string array).
fn scopes(claims: &Map<String, Value>) -> Result<Option<Vec<String>>, TokenError> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => Ok(Some(s.split_ascii_whitespace().map(str::to_string).collect())),
        (Some(_), _) => Err(TokenError::MissingClaim("scope")),
        (None, Some(Value::Array(a))) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or(TokenError::MissingClaim("scp")),
        (None, Some(_)) => Err(TokenError::MissingClaim("scp")),
        (None, None) => Ok(None),
    }
}

/// The HTTP client JWKS are fetched with: bounded in time and redirects.
fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).redirect(reqwest::redirect::Policy::limited(3))
}

/// Loads an issuer's JWKS from its source.
pub async fn load_jwks(spec: &IssuerSpec, http: &reqwest::Client) -> Result<KeySet, String> {
    let set: JwkSet = match &spec.jwks {
        JwksSource::Inline(set) => set.clone(),
        JwksSource::File(path) => {
            let text = tokio::fs::read_to_string(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?
        }
        JwksSource::Url(url) => {
            let mut request = http.get(url);
            if let Some(file) = &spec.jwks_bearer_token_file {
                let token = tokio::fs::read_to_string(file).await.map_err(|e| format!("{}: {e}", file.display()))?;
                let token = crate::secret::Secret::new(token.trim());
                request = request.bearer_auth(token.expose());
            }
            let mut response = request.send().await.map_err(|e| format!("fetching JWKS: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("fetching JWKS: HTTP {}", response.status()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| format!("fetching JWKS: {e}"))? {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?
        }
    };
    let (keys, problems) = KeySet::from_jwks(&set, &spec.algorithms);
    for problem in problems {
        tracing::warn!(issuer = %spec.name, %problem, "JWKS key left out");
    }
    if keys.is_empty() {
        return Err("JWKS holds no usable key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_checked_with_leeway() {
        let c = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100})), 99, 0), Ok(100));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100})), 100, 0), Err(TokenError::Expired));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100})), 104, 5), Ok(100));
        assert_eq!(check_times(&c(serde_json::json!({})), 1, 0), Err(TokenError::MissingClaim("exp")));
        assert_eq!(check_times(&c(serde_json::json!({"exp": "soon"})), 1, 0), Err(TokenError::MissingClaim("exp")));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100, "nbf": 60})), 50, 5), Err(TokenError::NotYetValid));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100, "iat": 60})), 50, 5), Err(TokenError::IssuedInFuture));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100, "iat": 52, "nbf": 52})), 50, 5), Ok(100));
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let c = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(scopes(&c(serde_json::json!({"scope": "a b"}))).unwrap(), Some(vec!["a".into(), "b".into()]));
        assert_eq!(scopes(&c(serde_json::json!({"scp": ["a"]}))).unwrap(), Some(vec!["a".into()]));
        assert_eq!(scopes(&c(serde_json::json!({}))).unwrap(), None);
        assert!(scopes(&c(serde_json::json!({"scope": 3}))).is_err());
    }
}
