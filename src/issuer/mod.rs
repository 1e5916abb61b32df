//! Trusted issuers: who may vouch for a workload, and how their assertions are verified.
//!
//! An assertion is routed to its issuer by `iss` (or, for a SPIFFE JWT-SVID without one, by the trust domain
//! of its `sub`), checked against that issuer's size limit and algorithms, verified with a key pinned to one
//! algorithm, and its time claims and audience checked with the issuer's leeway, all against a `now` the
//! caller passes in. Then its claims are mapped to a [`Principal`]. tessera's own tokens are verified by the
//! same path with the broker's keyring, so a token can be exchanged again for a narrower one.
//!
//! JWKS come inline, from a file, or from a URL, through a [`KeySource`] (the fetcher in [`jwks`]). File and
//! URL sets are reloaded when a token names an unknown `kid` (at most once per `min_refresh_interval`, with
//! concurrent callers waiting on one reload); URL sets also every `refresh_interval`, and files whenever their
//! content changes (checked every `min_refresh_interval`), by the refresh tasks in [`jwks`]. A failed reload keeps
//! the keys already held.

pub mod jwks;
mod verified;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::metrics::Metrics;
use crate::policy::Principal;
use crate::scopes::Scopes;
use crate::token::jws::{self, Algorithm, JwsError};
use crate::token::keys::{JwkSet, KeySet};
use crate::token::{AccessClaims, Actor, Keyring, Party};

/// Where an issuer's keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// A set given in the config (`jwks_inline`), fixed for the life of the process.
    Inline(JwkSet),
    /// A file (`jwks_file`, path resolved), reread when a token names an unknown `kid` or the file changes.
    File(PathBuf),
    /// An http(s) URL (`jwks_url`), fetched at start, every `refresh_interval` and on an unknown `kid`.
    Url(String),
}

/// What an issuer's assertions are accepted as (`used_for` in the config).
///
/// Kept apart because an issuer entry that only vouches for a client's own key (`private_key_jwt`: `iss` is
/// the client id) must not also let that client mint subject tokens for any `sub` it likes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsedFor {
    /// `subject_token` and `actor_token` of an exchange (the default).
    #[default]
    SubjectTokens,
    /// Client assertions only (RFC 7523 §2.2 `private_key_jwt`, SPIFFE JWT-SVID client authentication).
    ClientAssertions,
    /// Both.
    Both,
}

impl UsedFor {
    /// Whether subject and actor tokens of this issuer are accepted.
    pub fn subject_tokens(self) -> bool {
        matches!(self, UsedFor::SubjectTokens | UsedFor::Both)
    }

    /// Whether client assertions of this issuer are accepted.
    pub fn client_assertions(self) -> bool {
        matches!(self, UsedFor::ClientAssertions | UsedFor::Both)
    }
}

/// One trusted upstream issuer, as validated from the config.
#[derive(Clone, Debug)]
pub struct IssuerSpec {
    /// Short name used in policies and logs (`kubernetes`).
    pub name: String,
    /// The `iss` its tokens carry. `None` only for a SPIFFE trust domain whose SVIDs carry no `iss`.
    pub issuer: Option<String>,
    /// The bare SPIFFE trust domain whose SVIDs without `iss` are routed here (by their `sub`).
    pub spiffe_trust_domain: Option<String>,
    /// Where its keys come from.
    pub jwks: JwksSource,
    /// The `aud` an assertion must carry to be accepted here (the broker's identifier by default).
    pub audience: String,
    /// The `alg` values accepted; never empty, never `none` or HMAC.
    pub algorithms: Vec<Algorithm>,
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// The largest assertion accepted from this issuer, in bytes.
    pub max_token_bytes: usize,
    /// The top-level claim that names the principal (`sub` by default).
    pub subject_claim: String,
    /// Principal tag name → JSON pointer into the claims (`/kubernetes.io/namespace`).
    pub attributes: BTreeMap<String, String>,
    /// The least time between two reloads caused by an unknown `kid`, so made-up `kid`s cannot turn tessera
    /// into a JWKS-fetching amplifier.
    pub min_refresh_interval: Duration,
    /// How often a `jwks_url` set is fetched again (at least 10 s).
    pub refresh_interval: Duration,
    /// Each assertion may be exchanged once: it must carry a `jti`, and a replay is refused.
    pub single_use: bool,
    /// The longest an assertion may live (`exp - iat`, and `exp - now`), in seconds: longer-lived ones are
    /// refused, and a subject revocation is kept at least this long, so it never ends before what it revokes.
    pub max_assertion_lifetime: u64,
    /// A file holding a bearer token sent when fetching `jwks_url`, read at every fetch (a Kubernetes
    /// projected service-account token rotates): the API server's `/openid/v1/jwks` wants one.
    pub jwks_bearer_token_file: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM) for `jwks_url`, such as the cluster CA.
    pub jwks_ca_pem: Option<Vec<u8>>,
    /// Whether its assertions are accepted as subject/actor tokens, as client assertions, or both.
    pub used_for: UsedFor,
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
    /// Not a well-formed JWS, too large, an algorithm not allowed, or a bad signature.
    #[error("{0}")]
    Jws(#[from] JwsError),
    /// Its `iss` (or SPIFFE trust domain) names no configured issuer; for tessera's own tokens, their
    /// subject's issuer is no longer configured.
    #[error("is from an issuer that is not trusted")]
    UnknownIssuer,
    /// No key of the issuer fits its `kid` and algorithm, even after a reload.
    #[error("is signed with a key the issuer does not publish")]
    UnknownKey,
    /// `exp` has passed (RFC 7519 §4.1.4).
    #[error("has expired")]
    Expired,
    /// `nbf` is still ahead, beyond the leeway (RFC 7519 §4.1.5).
    #[error("is not valid yet")]
    NotYetValid,
    /// `iat` is ahead of now, beyond the leeway.
    #[error("is issued in the future")]
    IssuedInFuture,
    /// `aud` does not contain the audience the issuer's assertions must carry.
    #[error("is not for this broker (audience)")]
    WrongAudience,
    /// The named claim is required but absent, or malformed.
    #[error("has no valid `{0}` claim")]
    MissingClaim(&'static str),
    /// One of tessera's own tokens without `typ: at+jwt` (RFC 9068 §2.1): not an access token of ours.
    #[error("has a `typ` this issuer does not use")]
    WrongType,
    /// `exp - iat` or `exp - now` exceeds the issuer's `max_assertion_lifetime`.
    #[error("lives longer than its issuer allows")]
    TooLongLived,
}

/// The longest `sub` (of a subject, an actor or a `may_act` entry) accepted: what a revocation can name.
pub const MAX_SUB_BYTES: usize = 512;
/// How deep an upstream assertion's own `act` chain may nest, and how many `may_act` entries it may list.
const MAX_UPSTREAM_ACT_DEPTH: usize = 16;
const MAX_MAY_ACT_ENTRIES: usize = 16;

/// A fetched key set, with a digest of the document it came from (so a refresh can tell a change).
#[derive(Debug)]
pub struct Fetched {
    /// The usable keys of the set.
    keys: KeySet,
    /// SHA-256 of the document.
    digest: [u8; 32],
}

/// Where issuers' keys are (re)loaded from: the port the JWKS fetcher implements, so verification itself does
/// no I/O of its own.
pub trait KeySource: Send + Sync {
    /// (Re)loads `spec`'s key set from its file or URL. On an error the caller keeps the keys it holds.
    fn load<'a>(&'a self, spec: &'a IssuerSpec) -> Pin<Box<dyn Future<Output = Result<Fetched, String>> + Send + 'a>>;
}

/// An issuer's keys and the state of their reloading.
struct Upstream {
    spec: IssuerSpec,
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
    Broker(std::sync::Arc<AccessClaims>),
}

/// A single-use assertion: it may be exchanged once, and must be remembered as spent until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SingleUse {
    /// The identifier of the assertion's issuer ([`IssuerSpec::id`]): `jti`s are unique per issuer only.
    pub issuer: String,
    /// The assertion's `jti`.
    pub jti: String,
    /// Unix seconds: the assertion's `exp` plus the issuer's leeway, after which it cannot be replayed anyway.
    pub until: u64,
}

/// What a client assertion is held to beyond its issuer's keys, algorithms and leeway (RFC 7523 §3).
#[derive(Clone, Copy, Debug)]
pub struct AssertionRules<'a> {
    /// The values one of which its `aud` must contain: the broker's issuer and its token endpoint URL.
    pub audiences: &'a [String],
    /// The most seconds its `exp` may be ahead of now (and of its `iat`).
    pub max_lifetime: u64,
}

/// A verified client assertion: whom it names, and the marker that spends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAssertionClaims {
    /// Its `iss`, when it has one (a JWT-SVID may not).
    pub iss: Option<String>,
    /// Its `sub`: the client id (`private_key_jwt`) or the SPIFFE ID (JWT-SVID).
    pub sub: String,
    /// Spends it: client assertions are always single use.
    pub spend: SingleUse,
}

/// A verified assertion: its principal and the claims exchange needs.
#[derive(Clone, Debug)]
pub struct Verified {
    /// An upstream assertion, or one of tessera's own tokens (with its claims).
    pub origin: Origin,
    /// The subject as policy sees it; for a tessera token, the original upstream subject.
    pub principal: Principal,
    /// The party that holds the token and acts with it: its current actor when it names one (`act`), else its
    /// subject. This is who an actor token makes the actor.
    pub holder: Principal,
    /// The token's own actor chain (RFC 8693 §4.1), every link qualified with an issuer.
    pub act: Option<Actor>,
    /// Unix seconds; an issued token never outlives it.
    pub exp: u64,
    /// Unix seconds, when the token says: a revocation of its subject made at or after it applies to it
    /// (without `iat`, every one does).
    pub iat: Option<u64>,
    /// The scopes the token carries, when it carries any (`scope` string or `scp` array).
    pub scopes: Option<Scopes>,
    /// RFC 8693 §4.4 `may_act`: who may act for this subject, when the token says; an unqualified entry is of
    /// the token's own issuer.
    pub may_act: Option<Vec<Party>>,
    /// For a single-use assertion: the key that marks it spent, and until when it must be remembered.
    pub spend: Option<SingleUse>,
}

/// The trusted upstream issuers and the broker's own verifying keys: verifies any token presented to the broker
/// into a [`Verified`], reloading an issuer's keys when needed.
pub struct Issuers {
    upstream: Vec<Arc<Upstream>>,
    by_iss: HashMap<String, usize>,
    by_trust_domain: HashMap<String, usize>,
    broker_issuer: String,
    own_keys: KeySet,
    own_leeway: u64,
    /// Tokens longer than this are refused before anything is decoded.
    max_token_bytes: usize,
    source: Arc<dyn KeySource>,
    metrics: Metrics,
    /// Tokens already verified (what a token presented again skips: the signature).
    verified: verified::VerifiedTokens<Arc<Verified>, VerifiedBy>,
}

/// What verified a cached token, checked again at every hit: one of the broker's keys, or an upstream
/// issuer's key set exactly as it was (a JWKS refresh replaces the set, and so ends those entries).
enum VerifiedBy {
    Own { kid: Option<String>, alg: Algorithm },
    Upstream { issuer: usize, keys: Arc<KeySet> },
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuers")
            .field("upstream", &self.upstream.iter().map(|u| &u.spec.name).collect::<Vec<_>>())
            .finish()
    }
}

/// Own tokens are small; a larger one is not ours (and none is minted larger).
pub const MAX_OWN_TOKEN_BYTES: usize = 8 * 1024;

impl Issuers {
    /// `initial` holds the keys of inline and file sources, loaded while the config was validated.
    pub fn new(
        specs: Vec<(IssuerSpec, KeySet)>,
        keyring: &Keyring,
        broker_issuer: String,
        own_leeway: u64,
        metrics: Metrics,
        source: Arc<dyn KeySource>,
    ) -> Issuers {
        let mut by_iss = HashMap::new();
        let mut by_trust_domain = HashMap::new();
        let mut max_token_bytes = MAX_OWN_TOKEN_BYTES;
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
                Arc::new(Upstream { spec, keys: RwLock::new(Arc::new(keys)), reload: tokio::sync::Mutex::new(None) })
            })
            .collect();
        Issuers {
            upstream,
            by_iss,
            by_trust_domain,
            broker_issuer,
            own_keys: keyring.verifying_keys().clone(),
            own_leeway,
            max_token_bytes,
            source,
            metrics,
            verified: verified::VerifiedTokens::new(verified::DEFAULT_VERIFIED_TOKENS),
        }
    }

    /// The issuers whose keys are fetched (from a file or a URL), by index, for [`jwks`]'s refresh tasks.
    pub(crate) fn sourced(&self) -> impl Iterator<Item = (usize, &IssuerSpec)> {
        self.upstream
            .iter()
            .enumerate()
            .filter(|(_, up)| !matches!(up.spec.jwks, JwksSource::Inline(_)))
            .map(|(i, up)| (i, &up.spec))
    }

    /// How many upstream issuers are trusted.
    pub fn len(&self) -> usize {
        self.upstream.len()
    }

    /// Whether no upstream issuer is trusted (only the broker's own tokens verify).
    pub fn is_empty(&self) -> bool {
        self.upstream.is_empty()
    }

    /// Takes over the keys `previous` holds for each issuer of the same name fetching the same `jwks_url`:
    /// a reloaded set starts with the keys already fetched, so a JWKS endpoint that is down during a reload
    /// does not leave that issuer without keys.
    pub fn adopt_keys(&self, previous: &Issuers) {
        for up in &self.upstream {
            let JwksSource::Url(url) = &up.spec.jwks else { continue };
            let same = previous
                .upstream
                .iter()
                .find(|old| old.spec.name == up.spec.name && matches!(&old.spec.jwks, JwksSource::Url(u) if u == url));
            if let Some(old) = same {
                let keys = old.keys();
                match up.keys.write() {
                    Ok(mut k) => *k = keys,
                    Err(poisoned) => *poisoned.into_inner() = keys,
                }
            }
        }
    }

    /// Reloads issuer `index`'s keys; on failure keeps those held.
    pub(crate) async fn reload_index(&self, index: usize) {
        if let Some(up) = self.upstream.get(index) {
            self.reload(up).await;
        }
    }

    /// Reloads issuer `index`'s keys if their document changed since `seen` (its digest), which it updates.
    pub(crate) async fn reload_if_changed(&self, index: usize, seen: &mut Option<[u8; 32]>) {
        let Some(up) = self.upstream.get(index) else { return };
        match self.source.load(&up.spec).await {
            Ok(fetched) if Some(fetched.digest) != *seen => {
                *seen = Some(fetched.digest);
                self.apply(up, Ok(fetched));
            }
            Ok(_) => {}
            Err(error) => self.apply(up, Err(error)),
        }
    }

    /// The digest of issuer `index`'s key document as it is now, if it loads.
    pub(crate) async fn digest(&self, index: usize) -> Option<[u8; 32]> {
        let up = self.upstream.get(index)?;
        self.source.load(&up.spec).await.ok().map(|f| f.digest)
    }

    async fn reload(&self, up: &Upstream) {
        let result = self.source.load(&up.spec).await;
        self.apply(up, result);
    }

    /// Takes a freshly loaded key set, or keeps the keys held when loading failed.
    fn apply(&self, up: &Upstream, result: Result<Fetched, String>) {
        let attrs = [
            opentelemetry::KeyValue::new("issuer", up.spec.name.clone()),
            opentelemetry::KeyValue::new("result", if result.is_ok() { "ok" } else { "error" }),
        ];
        self.metrics.jwks_refreshes.add(1, &attrs);
        match result {
            Ok(fetched) => {
                up.set_keys(fetched.keys);
                tracing::info!(issuer = %up.spec.name, "JWKS reloaded");
            }
            Err(error) => {
                tracing::warn!(issuer = %up.spec.name, %error, "JWKS reload failed; keeping the keys already held");
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
    pub async fn verify(&self, token: &str, now: u64) -> Result<Arc<Verified>, TokenError> {
        // A token verified before: its times and keys are checked again, not its signature.
        let digest = (token.len() <= self.max_token_bytes).then(|| verified::digest(token));
        if let Some(d) = &digest
            && let Some(v) = self.verified.get(d, now, |by| self.still_trusted(by))
        {
            return Ok(v);
        }
        let parsed = jws::parse(token, self.max_token_bytes)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&parsed.payload).map_err(|_| JwsError::MalformedClaims)?;
        let iss = claims.get("iss").and_then(Value::as_str);
        if iss == Some(self.broker_issuer.as_str()) {
            let not_before = ["nbf", "iat"].iter().filter_map(|c| claims.get(*c).and_then(Value::as_u64)).max();
            let kid = parsed.header.kid.clone();
            let v = self.verify_own(&parsed, token.len(), claims, Some(now))?;
            if let Some(d) = digest {
                let checked = verified::Checked {
                    by: VerifiedBy::Own { kid, alg: parsed.alg },
                    exp: v.exp,
                    exp_leeway: 0,
                    not_before: not_before.unwrap_or(0),
                    skew: self.own_leeway,
                };
                let v = Arc::new(v);
                self.verified.insert(d, Arc::clone(&v), checked, now);
                return Ok(v);
            }
            return Ok(Arc::new(v));
        }
        let up = self.route(iss, &claims).ok_or(TokenError::UnknownIssuer)?;
        let spec = &up.spec;
        // An issuer kept for client assertions vouches for no subject.
        if !spec.used_for.subject_tokens() {
            return Err(TokenError::UnknownIssuer);
        }
        let keys = self.check_signature(up, &parsed, token.len()).await?;
        let exp = check_times(&claims, now, spec.leeway, spec.leeway)?;
        let iat = claims.get("iat").and_then(Value::as_u64);
        let not_before = ["nbf", "iat"].iter().filter_map(|c| claims.get(*c).and_then(Value::as_u64)).max();
        if exp.saturating_sub(now) > spec.max_assertion_lifetime
            || iat.is_some_and(|iat| exp.saturating_sub(iat) > spec.max_assertion_lifetime)
        {
            return Err(TokenError::TooLongLived);
        }
        if !audiences(&claims).any(|a| a == spec.audience) {
            return Err(TokenError::WrongAudience);
        }
        let sub = claims
            .get(&spec.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| is_revocable_name(s))
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
        let principal = Principal {
            issuer: spec.name.clone(),
            iss: spec.id(),
            sub: sub.to_string(),
            attributes,
            spiffe: spiffe_id(spec, sub),
        };
        let act = match claims.get("act") {
            None => None,
            Some(v) => Some(upstream_act(v, &principal.iss, 1).ok_or(TokenError::MissingClaim("act"))?),
        };
        let may_act = match claims.get("may_act") {
            None => None,
            Some(v) => Some(upstream_may_act(v, &principal.iss).ok_or(TokenError::MissingClaim("may_act"))?),
        };
        let holder = match &act {
            Some(a) => self.principal_of(&a.party(&principal.iss)),
            None => principal.clone(),
        };
        let spend = match spec.single_use {
            false => None,
            true => {
                let jti = claims
                    .get("jti")
                    .and_then(Value::as_str)
                    .filter(|j| !j.is_empty() && j.len() <= 256)
                    .ok_or(TokenError::MissingClaim("jti"))?;
                Some(SingleUse { issuer: spec.id(), jti: jti.to_string(), until: exp.saturating_add(spec.leeway) })
            }
        };
        let v = Verified {
            spend,
            origin: Origin::Upstream,
            principal,
            holder,
            act,
            exp,
            iat,
            scopes: scopes(&claims)?,
            may_act,
        };
        // Once past the checks above it stays past them (its lifetime only shrinks as `now` grows), so a hit
        // re-checks only its times and its issuer's keys. A single-use assertion's marker is in `v.spend`: each
        // exchange still spends it in the store, so a replay is refused, cached or not.
        if let (Some(d), Some(issuer)) = (digest, self.upstream.iter().position(|u| Arc::ptr_eq(u, up))) {
            let checked = verified::Checked {
                by: VerifiedBy::Upstream { issuer, keys },
                exp,
                exp_leeway: spec.leeway,
                not_before: not_before.unwrap_or(0),
                skew: spec.leeway,
            };
            let v = Arc::new(v);
            self.verified.insert(d, Arc::clone(&v), checked, now);
            return Ok(v);
        }
        Ok(Arc::new(v))
    }

    /// Whether what verified a cached token is still trusted: the broker's key is still in its keyring, or the
    /// issuer still holds the very key set that verified the assertion.
    fn still_trusted(&self, by: &VerifiedBy) -> bool {
        match by {
            VerifiedBy::Own { kid, alg } => self.own_keys.find(kid.as_deref(), *alg).is_some(),
            VerifiedBy::Upstream { issuer, keys } => {
                self.upstream.get(*issuer).is_some_and(|up| Arc::ptr_eq(keys, &up.keys()))
            }
        }
    }

    /// Checks an assertion against its issuer's size limit and algorithms, finds the key (reloading the set
    /// once on an unknown `kid`) and verifies the signature: the one signature check of every upstream JWT,
    /// subject token or client assertion.
    /// Returns the key set that verified it.
    async fn check_signature(
        &self,
        up: &Upstream,
        parsed: &jws::Unverified<'_>,
        len: usize,
    ) -> Result<Arc<KeySet>, TokenError> {
        let spec = &up.spec;
        if len > spec.max_token_bytes {
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
        Ok(keys)
    }

    /// The `iss` and `sub` a client assertion claims, read before it is verified, only to find which client
    /// it claims to be (and so which issuer's keys must verify it). Nothing read here is trusted.
    pub fn peek_client_assertion(&self, token: &str) -> Result<(Option<String>, Option<String>), TokenError> {
        let parsed = jws::parse(token, self.max_token_bytes)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&parsed.payload).map_err(|_| JwsError::MalformedClaims)?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        Ok((text("iss"), text("sub")))
    }

    /// The name of the issuer that holds the trust domain of a SPIFFE ID, when one is configured.
    pub fn spiffe_issuer(&self, spiffe_id: &str) -> Option<&str> {
        let domain = spiffe_id.strip_prefix("spiffe://")?.split('/').next()?;
        let index = *self.by_trust_domain.get(domain)?;
        self.upstream.get(index).map(|u| u.spec.name.as_str())
    }

    /// The `alg` values client assertions may be signed with: those of every issuer that accepts them.
    pub fn client_assertion_algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = self
            .upstream
            .iter()
            .filter(|u| u.spec.used_for.client_assertions())
            .flat_map(|u| u.spec.algorithms.iter().map(|a| a.as_str()))
            .collect();
        algs.sort_unstable();
        algs.dedup();
        algs
    }

    /// Verifies a client assertion (RFC 7523 §3) with the keys of the issuer named `issuer`, as of `now`:
    /// the signature (through the same check as every upstream JWT), `iss` (that issuer's, or none for a
    /// JWT-SVID of its trust domain), `exp` (required, with the issuer's leeway, and at most
    /// `rules.max_lifetime` ahead), `nbf`/`iat`, an `aud` naming the broker, `sub`, and `jti` (required: every
    /// client assertion is single use).
    pub async fn verify_client_assertion(
        &self,
        token: &str,
        issuer: &str,
        rules: &AssertionRules<'_>,
        now: u64,
    ) -> Result<ClientAssertionClaims, TokenError> {
        let up = self.upstream.iter().find(|u| u.spec.name == issuer).ok_or(TokenError::UnknownIssuer)?;
        let spec = &up.spec;
        if !spec.used_for.client_assertions() {
            return Err(TokenError::UnknownIssuer);
        }
        let parsed = jws::parse(token, spec.max_token_bytes)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&parsed.payload).map_err(|_| JwsError::MalformedClaims)?;
        let iss = match claims.get("iss") {
            None => None,
            Some(v) => Some(v.as_str().ok_or(TokenError::MissingClaim("iss"))?),
        };
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| is_revocable_name(s))
            .ok_or(TokenError::MissingClaim("sub"))?;
        let routed = match (iss, &spec.issuer, &spec.spiffe_trust_domain) {
            (Some(iss), Some(expected), _) => iss == expected,
            // A JWT-SVID without `iss`: its `sub` must be in the issuer's trust domain.
            (None, _, Some(td)) => {
                sub.strip_prefix("spiffe://").and_then(|rest| rest.split('/').next()) == Some(td.as_str())
            }
            _ => false,
        };
        if !routed {
            return Err(TokenError::UnknownIssuer);
        }
        self.check_signature(up, &parsed, token.len()).await?;
        let exp = check_times(&claims, now, spec.leeway, spec.leeway)?;
        let max_lifetime = rules.max_lifetime.min(spec.max_assertion_lifetime);
        let iat = claims.get("iat").and_then(Value::as_u64);
        if exp.saturating_sub(now) > max_lifetime || iat.is_some_and(|iat| exp.saturating_sub(iat) > max_lifetime) {
            return Err(TokenError::TooLongLived);
        }
        if !audiences(&claims).any(|a| rules.audiences.iter().any(|accepted| accepted == a)) {
            return Err(TokenError::WrongAudience);
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or(TokenError::MissingClaim("jti"))?;
        Ok(ClientAssertionClaims {
            iss: iss.map(str::to_string),
            sub: sub.to_string(),
            spend: SingleUse { issuer: spec.id(), jti: jti.to_string(), until: exp.saturating_add(spec.leeway) },
        })
    }

    /// Verifies a Security Event Token (RFC 8417) pushed by one of the issuers named in `names` (Shared Signals
    /// transmitters, [`crate::ssf::receive`]), as of `now`: `typ` `secevent+jwt`, an `iss` that is one of
    /// theirs, the signature (through the same check as every upstream JWT, with that issuer's keys and
    /// algorithms), an `aud` among `audiences`, `iat` (required: not ahead beyond the leeway, nor older than the
    /// issuer's `max_assertion_lifetime`) and `jti` (required). Answers the claims, the issuer's name, and
    /// what makes it single use.
    pub async fn verify_security_event(
        &self,
        token: &str,
        names: &[&str],
        accepted: &[&str],
        now: u64,
    ) -> Result<(Map<String, Value>, &str, SingleUse), TokenError> {
        let parsed = jws::parse(token, MAX_OWN_TOKEN_BYTES)?;
        if parsed.header.typ.as_deref() != Some("secevent+jwt") {
            return Err(TokenError::WrongType);
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(&parsed.payload).map_err(|_| JwsError::MalformedClaims)?;
        let iss = claims.get("iss").and_then(Value::as_str).ok_or(TokenError::MissingClaim("iss"))?;
        let up = self
            .upstream
            .iter()
            .find(|u| names.contains(&u.spec.name.as_str()) && u.spec.issuer.as_deref() == Some(iss))
            .ok_or(TokenError::UnknownIssuer)?;
        let spec = &up.spec;
        self.check_signature(up, &parsed, token.len()).await?;
        if !audiences(&claims).any(|a| accepted.contains(&a)) {
            return Err(TokenError::WrongAudience);
        }
        let iat = claims.get("iat").and_then(Value::as_u64).ok_or(TokenError::MissingClaim("iat"))?;
        if iat > now.saturating_add(spec.leeway) {
            return Err(TokenError::IssuedInFuture);
        }
        if now.saturating_sub(iat) > spec.max_assertion_lifetime {
            return Err(TokenError::Expired);
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or(TokenError::MissingClaim("jti"))?;
        let until = iat.saturating_add(spec.max_assertion_lifetime).saturating_add(spec.leeway);
        let spend = SingleUse { issuer: spec.id(), jti: jti.to_string(), until };
        Ok((claims, spec.name.as_str(), spend))
    }

    /// A party as policy sees it: its issuer's short name when the issuer is configured, and its SPIFFE ID's
    /// parts when that issuer is a SPIFFE trust domain (the party's attributes are not known: only a
    /// subject's are carried). An unconfigured issuer's parties go by their `iss` as the name.
    pub fn principal_of(&self, party: &Party) -> Principal {
        let spec = self.upstream.iter().map(|u| &u.spec).find(|s| s.id() == party.iss);
        Principal {
            issuer: spec.map_or_else(|| party.iss.clone(), |s| s.name.clone()),
            iss: party.iss.clone(),
            sub: party.sub.clone(),
            attributes: BTreeMap::new(),
            spiffe: spec.and_then(|s| spiffe_id(s, &party.sub)),
        }
    }

    /// How long a revocation of a principal of issuer `iss` must be kept so that no assertion issued before
    /// it can still be accepted: the issuer's maximum assertion lifetime plus its leeway.
    pub fn assertion_retention(&self, iss: &str) -> u64 {
        self.upstream
            .iter()
            .map(|u| &u.spec)
            .filter(|s| s.id() == iss)
            .map(|s| s.max_assertion_lifetime.saturating_add(s.leeway))
            .max()
            .unwrap_or(0)
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
        if len > MAX_OWN_TOKEN_BYTES {
            return Err(JwsError::Oversized(MAX_OWN_TOKEN_BYTES).into());
        }
        if parsed.header.typ.as_deref() != Some("at+jwt") {
            return Err(TokenError::WrongType);
        }
        let key = self.own_keys.find(parsed.header.kid.as_deref(), parsed.alg).ok_or(TokenError::UnknownKey)?;
        parsed.verify(key)?;
        if let Some(now) = now {
            // tessera's own `exp` is exact (RFC 7662: an expired token is inactive); only `nbf`/`iat` get the
            // leeway, for replicas whose clocks differ a little.
            check_times(&claims, now, 0, self.own_leeway)?;
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
            spiffe: spiffe_id(spec, &access.sub),
        };
        let scopes = Some(access.scope.clone());
        let holder = match &access.act {
            Some(a) => self.principal_of(&a.party(&access.sub_iss)),
            None => principal.clone(),
        };
        Ok(Verified {
            exp: access.exp,
            iat: Some(access.iat),
            act: access.act.clone(),
            may_act: access.may_act.clone(),
            origin: Origin::Broker(std::sync::Arc::new(access)),
            principal,
            holder,
            scopes,
            spend: None,
        })
    }

    /// Verifies the signature of one of tessera's own tokens, whatever its times (to revoke it).
    pub fn verify_own_ignoring_time(&self, token: &str) -> Result<Verified, TokenError> {
        let parsed = jws::parse(token, MAX_OWN_TOKEN_BYTES)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&parsed.payload).map_err(|_| JwsError::MalformedClaims)?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.broker_issuer.as_str()) {
            return Err(TokenError::UnknownIssuer);
        }
        self.verify_own(&parsed, token.len(), claims, None)
    }

    /// The identifier of a configured upstream issuer named by its `iss`, its SPIFFE prefix or its name.
    pub fn upstream_id(&self, name_or_id: &str) -> Option<String> {
        self.upstream.iter().map(|u| &u.spec).find(|s| s.name == name_or_id || s.id() == name_or_id).map(IssuerSpec::id)
    }

    /// The upstream issuer names, for diagnostics.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.upstream.iter().map(|u| u.spec.name.as_str())
    }
}

/// Whether `s` can name a principal (a `sub`) that a revocation can later name too.
/// The parts of `sub` as a SPIFFE ID, for an issuer that is a SPIFFE trust domain and a `sub` in that trust
/// domain only: another issuer's `sub` that merely looks like a SPIFFE ID says nothing about SPIFFE.
fn spiffe_id(spec: &IssuerSpec, sub: &str) -> Option<crate::policy::SpiffeId> {
    let td = spec.spiffe_trust_domain.as_deref()?;
    crate::policy::SpiffeId::parse(sub).filter(|id| id.trust_domain == td)
}

fn is_revocable_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUB_BYTES && !s.chars().any(char::is_control)
}

/// An upstream assertion's own `act` chain, each link qualified with `iss` when it names none; `None` when
/// malformed or nested too deep.
fn upstream_act(v: &Value, iss: &str, depth: usize) -> Option<Actor> {
    if depth > MAX_UPSTREAM_ACT_DEPTH {
        return None;
    }
    let sub = v.get("sub")?.as_str().filter(|s| is_revocable_name(s))?;
    let actor_iss = match v.get("iss") {
        None => iss,
        Some(i) => i.as_str().filter(|s| is_revocable_name(s))?,
    };
    let act = match v.get("act") {
        None => None,
        Some(inner) => Some(Box::new(upstream_act(inner, iss, depth + 1)?)),
    };
    Some(Actor { sub: sub.to_string(), iss: Some(actor_iss.to_string()), act })
}

/// An upstream `may_act` (one object or a list of them), every entry qualified: an unqualified `sub` means
/// the assertion's own issuer, since `sub` is unique only within its issuer. `None` when malformed.
fn upstream_may_act(v: &Value, iss: &str) -> Option<Vec<Party>> {
    let entry = |m: &Value| -> Option<Party> {
        let sub = m.get("sub")?.as_str().filter(|s| is_revocable_name(s))?;
        let iss = match m.get("iss") {
            None => iss,
            Some(i) => i.as_str().filter(|s| is_revocable_name(s))?,
        };
        Some(Party { iss: iss.to_string(), sub: sub.to_string() })
    };
    match v {
        Value::Array(list) if list.len() <= MAX_MAY_ACT_ENTRIES => list.iter().map(entry).collect(),
        Value::Object(_) => Some(vec![entry(v)?]),
        _ => None,
    }
}

/// Checks `exp` (required) with `exp_leeway`, and `nbf` and `iat` (when present) with `skew`; returns `exp`.
fn check_times(claims: &Map<String, Value>, now: u64, exp_leeway: u64, skew: u64) -> Result<u64, TokenError> {
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
    if now >= exp.saturating_add(exp_leeway) {
        return Err(TokenError::Expired);
    }
    if number("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(TokenError::NotYetValid);
    }
    if number("iat")?.is_some_and(|iat| iat > now.saturating_add(skew)) {
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

/// The scopes a token carries: `scope` (space-delimited, RFC 8693 §4.2) or `scp` (a string array), each
/// token by the one scope rule; a claim that breaks it makes the assertion invalid.
fn scopes(claims: &Map<String, Value>) -> Result<Option<Scopes>, TokenError> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => Scopes::parse(s).map(Some).map_err(|_| TokenError::MissingClaim("scope")),
        (Some(_), _) => Err(TokenError::MissingClaim("scope")),
        (None, Some(Value::Array(a))) => a
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .and_then(|list| Scopes::from_tokens(list).ok())
            .map(Some)
            .ok_or(TokenError::MissingClaim("scp")),
        (None, Some(_)) => Err(TokenError::MissingClaim("scp")),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_checked_with_leeway() {
        let c = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100})), 99, 0, 0), Ok(100));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100})), 100, 0, 0), Err(TokenError::Expired));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100})), 104, 5, 5), Ok(100));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100})), 100, 0, 5), Err(TokenError::Expired), "exact exp");
        assert_eq!(check_times(&c(serde_json::json!({})), 1, 0, 0), Err(TokenError::MissingClaim("exp")));
        let soon = serde_json::json!({"exp": "soon"});
        assert_eq!(check_times(&c(soon), 1, 0, 0), Err(TokenError::MissingClaim("exp")));
        let early = serde_json::json!({"exp": 100, "nbf": 60});
        assert_eq!(check_times(&c(early), 50, 5, 5), Err(TokenError::NotYetValid));
        let future = serde_json::json!({"exp": 100, "iat": 60});
        assert_eq!(check_times(&c(future), 50, 5, 5), Err(TokenError::IssuedInFuture));
        assert_eq!(check_times(&c(serde_json::json!({"exp": 100, "iat": 52, "nbf": 52})), 50, 0, 5), Ok(100));
    }

    #[test]
    fn upstream_act_and_may_act_are_qualified_with_the_assertion_issuer() {
        let act =
            upstream_act(&serde_json::json!({"sub": "a", "act": {"sub": "b", "iss": "https://x"}}), "https://k", 1);
        let act = act.unwrap();
        assert_eq!(act.party("?"), Party { iss: "https://k".into(), sub: "a".into() });
        assert_eq!(act.act.as_ref().unwrap().party("?"), Party { iss: "https://x".into(), sub: "b".into() });
        assert!(upstream_act(&serde_json::json!({"sub": "a\nb"}), "https://k", 1).is_none(), "control characters");
        assert!(upstream_act(&serde_json::json!({"sub": 3}), "https://k", 1).is_none());
        let mut deep = serde_json::json!({"sub": "z"});
        for _ in 0..MAX_UPSTREAM_ACT_DEPTH {
            deep = serde_json::json!({"sub": "z", "act": deep});
        }
        assert!(upstream_act(&deep, "https://k", 1).is_none(), "nested too deep");

        let m = upstream_may_act(&serde_json::json!({"sub": "agent"}), "https://k").unwrap();
        assert_eq!(m, vec![Party { iss: "https://k".into(), sub: "agent".into() }]);
        let m = upstream_may_act(&serde_json::json!([{"sub": "a"}, {"sub": "b", "iss": "https://x"}]), "https://k");
        assert_eq!(m.unwrap()[1], Party { iss: "https://x".into(), sub: "b".into() });
        assert!(upstream_may_act(&serde_json::json!("agent"), "https://k").is_none());
        assert!(upstream_may_act(&serde_json::json!([{"iss": "https://k"}]), "https://k").is_none());
    }

    #[test]
    fn spiffe_parts_come_only_from_a_spiffe_issuer_for_its_own_trust_domain() {
        let spec = |td: Option<&str>| IssuerSpec {
            name: "spiffe".into(),
            issuer: None,
            spiffe_trust_domain: td.map(Into::into),
            jwks: JwksSource::Inline(JwkSet { keys: vec![] }),
            audience: "https://tessera.test".into(),
            algorithms: vec![Algorithm::ES256],
            leeway: 0,
            max_token_bytes: 8192,
            subject_claim: "sub".into(),
            attributes: BTreeMap::new(),
            min_refresh_interval: Duration::ZERO,
            refresh_interval: Duration::from_secs(300),
            single_use: false,
            max_assertion_lifetime: 3600,
            jwks_bearer_token_file: None,
            jwks_ca_pem: None,
            used_for: UsedFor::SubjectTokens,
        };
        let id = spiffe_id(&spec(Some("td.example")), "spiffe://td.example/ns/agents/sa/a").unwrap();
        assert_eq!((id.trust_domain.as_str(), id.path.as_str()), ("td.example", "/ns/agents/sa/a"));
        assert!(spiffe_id(&spec(Some("td.example")), "spiffe://other.example/ns/agents").is_none(), "foreign domain");
        assert!(spiffe_id(&spec(None), "spiffe://td.example/ns/agents").is_none(), "not a SPIFFE issuer");
        assert!(spiffe_id(&spec(Some("td.example")), "system:serviceaccount:a:b").is_none());
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let c = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(scopes(&c(serde_json::json!({"scope": "a b"}))).unwrap(), Some(Scopes::parse("a b").unwrap()));
        assert_eq!(scopes(&c(serde_json::json!({"scp": ["a"]}))).unwrap(), Some(Scopes::parse("a").unwrap()));
        assert!(scopes(&c(serde_json::json!({"scope": "a\nb"}))).is_err(), "one rule for claims too");
        assert_eq!(scopes(&c(serde_json::json!({}))).unwrap(), None);
        assert!(scopes(&c(serde_json::json!({"scope": 3}))).is_err());
    }
}
