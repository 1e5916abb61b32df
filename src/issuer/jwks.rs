//! The JWKS fetcher: reads an issuer's key set from its file or its URL (over HTTPS with an optional extra CA
//! and bearer token, as the Kubernetes API server's `/openid/v1/jwks` wants), bounded in size and time; and
//! the tasks that keep fetched key sets current.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{Fetched, IssuerSpec, Issuers, JwksSource, KeySource};
use crate::token::keys::{JwkSet, KeySet};

/// The largest JWKS document fetched from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Fetches JWKS over HTTP(S) and from files; one HTTP client per issuer that trusts an extra CA.
#[derive(Debug)]
pub struct JwksFetcher {
    http: reqwest::Client,
    /// Issuer name → its own client, when it trusts an extra CA.
    with_ca: HashMap<String, reqwest::Client>,
}

impl JwksFetcher {
    /// A fetcher for `specs`, with a client of its own for each issuer whose `jwks_ca_pem` parses.
    pub fn new<'a>(specs: impl IntoIterator<Item = &'a IssuerSpec>) -> JwksFetcher {
        let with_ca = specs
            .into_iter()
            .filter_map(|spec| {
                let cert = reqwest::Certificate::from_pem(spec.jwks_ca_pem.as_deref()?).ok()?;
                let client = http_client().add_root_certificate(cert).build().ok()?;
                Some((spec.name.clone(), client))
            })
            .collect();
        JwksFetcher { http: http_client().build().unwrap_or_default(), with_ca }
    }
}

impl KeySource for JwksFetcher {
    fn load<'a>(&'a self, spec: &'a IssuerSpec) -> Pin<Box<dyn Future<Output = Result<Fetched, String>> + Send + 'a>> {
        let http = self.with_ca.get(&spec.name).unwrap_or(&self.http);
        Box::pin(load_jwks(spec, http))
    }
}

/// Fetches every URL-sourced JWKS once (at start). Failures are logged; those issuers start empty and are
/// retried on demand.
pub async fn warm_up(issuers: &Issuers) {
    let urls: Vec<usize> =
        issuers.sourced().filter(|(_, s)| matches!(s.jwks, JwksSource::Url(_))).map(|(i, _)| i).collect();
    for i in urls {
        issuers.reload_index(i).await;
    }
}

/// Keeps fetched JWKS current until the returned tasks are aborted: each URL set is refetched every
/// `refresh_interval` of its issuer; each file is re-read every `min_refresh_interval` and reloaded when its
/// content changed, so a key withdrawn from the file stops verifying within that bound.
pub fn spawn_refresh(issuers: &Arc<Issuers>) -> Vec<tokio::task::JoinHandle<()>> {
    let floor = |d: Duration| d.max(Duration::from_secs(1));
    issuers
        .sourced()
        .map(|(i, spec)| {
            let issuers = Arc::clone(issuers);
            match spec.jwks {
                JwksSource::File(_) => {
                    let every = floor(spec.min_refresh_interval);
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        let mut seen = issuers.digest(i).await;
                        loop {
                            tick.tick().await;
                            issuers.reload_if_changed(i, &mut seen).await;
                        }
                    })
                }
                _ => {
                    let every = floor(spec.refresh_interval);
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        tick.tick().await;
                        loop {
                            tick.tick().await;
                            issuers.reload_index(i).await;
                        }
                    })
                }
            }
        })
        .collect()
}

/// The HTTP client JWKS are fetched with: bounded in time and redirects.
fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).redirect(reqwest::redirect::Policy::limited(3))
}

/// Loads an issuer's JWKS from its source.
async fn load_jwks(spec: &IssuerSpec, http: &reqwest::Client) -> Result<Fetched, String> {
    let document: Vec<u8> = match &spec.jwks {
        JwksSource::Inline(set) => serde_json::to_vec(set).map_err(|e| e.to_string())?,
        JwksSource::File(path) => tokio::fs::read(path).await.map_err(|e| format!("{}: {e}", path.display()))?,
        JwksSource::Url(url) => {
            let mut request = http.get(url);
            if let Some(file) = &spec.jwks_bearer_token_file {
                let token = tokio::fs::read_to_string(file).await.map_err(|e| format!("{}: {e}", file.display()))?;
                let token = crate::secret::Token::new(token.trim());
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
            body
        }
    };
    let set: JwkSet = serde_json::from_slice(&document).map_err(|e| format!("not a JWKS: {e}"))?;
    let (keys, problems) = KeySet::from_jwks(&set, &spec.algorithms);
    for problem in problems {
        tracing::warn!(issuer = %spec.name, problem = problem.as_str(), "JWKS key left out");
    }
    if keys.is_empty() {
        return Err("JWKS holds no usable key".into());
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &document);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Ok(Fetched { keys, digest: out })
}
