//! TLS on both faces (rustls on aws-lc-rs): the server certificate and key, and the CA bundle client
//! certificates are checked against (mTLS), read from files and re-read when they change.
//!
//! cert-manager and Kubernetes Secret volumes rotate certificates by swapping files (a symlink swap), so the
//! files are re-read every [`TlsConfig::reload_interval`] and compared by content: a change builds a new
//! rustls config that every *new* connection uses; open connections keep theirs. A half-written or
//! mismatched file is logged and ignored (the old certificate stays served) until a good one appears.
//!
//! Handshakes run concurrently, off the accept loop, each within [`HANDSHAKE_TIMEOUT`], so a slow or
//! silent peer holds only its own connection; at most [`MAX_HANDSHAKES`] are in flight at once.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::client::PeerCertificate;

/// A TLS handshake that has not finished by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once, per listener; past it, accepting waits.
pub const MAX_HANDSHAKES: usize = 256;
/// ALPN for the gRPC face: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN for the HTTP face: HTTP/2 and HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Whether a client certificate is asked for, once a CA bundle is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A certificate is checked when sent; a caller without one authenticates another way (assertion,
    /// secret). Health probes and callers without a workload certificate still connect.
    Optional,
    /// Every connection must present a certificate the CA bundle accepts, or the handshake fails.
    Required,
}

/// The validated `[tls]` section: where the certificate, key and client CA bundle are.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// PEM: the server certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM: the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: the CAs client certificates are verified against (`None`: no mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required (only with `client_ca_file`).
    pub client_auth: ClientAuth,
    /// How often the files are re-read.
    pub reload_interval: Duration,
}

/// The contents of the files, as last read: compared whole, so a symlink swap or a rewrite in place are
/// both noticed, whatever the file times say.
#[derive(PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: zeroize::Zeroizing<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<Files, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(Files {
            cert: read(&config.cert_file)?,
            key: zeroize::Zeroizing::new(read(&config.key_file)?),
            client_ca: config.client_ca_file.as_ref().map(read).transpose()?,
        })
    }
}

/// Builds a rustls server config from the files' contents. Errors name the file, never its contents.
fn server_config(config: &TlsConfig, files: &Files, alpn: &[&[u8]]) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let at = |p: &PathBuf, what: &str| format!("{}: {what}", p.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<_, _>>()
        .map_err(|_| at(&config.cert_file, "not a PEM certificate chain"))?;
    if chain.is_empty() {
        return Err(at(&config.cert_file, "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|_| at(&config.key_file, "not a PEM private key"))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match (&config.client_ca_file, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|_| at(path, "not a PEM certificate bundle"))?;
                roots.add(ca).map_err(|e| at(path, &format!("a CA certificate is unusable ({e})")))?;
            }
            if roots.is_empty() {
                return Err(at(path, "holds no CA certificate"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match config.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| at(path, &e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", config.cert_file.display(), config.key_file.display()))?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(server)
}

/// Checks that `config`'s files make a working server config (for config validation: `tessera config check`
/// proves the certificate and key load).
pub fn check(config: &TlsConfig) -> Result<(), String> {
    server_config(config, &Files::read(config)?, ALPN_HTTP).map(drop)
}

/// The current rustls config of one listener, and the files it was built from.
pub struct Acceptor {
    config: TlsConfig,
    alpn: &'static [&'static [u8]],
    current: RwLock<(Arc<ServerConfig>, Arc<Files>)>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Reads the files and builds the first config; a problem here stops the start.
    pub fn new(config: TlsConfig, alpn: &'static [&'static [u8]]) -> Result<Arc<Acceptor>, String> {
        crate::install_crypto_provider();
        let files = Files::read(&config)?;
        let server = server_config(&config, &files, alpn)?;
        Ok(Arc::new(Acceptor { config, alpn, current: RwLock::new((Arc::new(server), Arc::new(files))) }))
    }

    fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard.0),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().0),
        }
    }

    /// Re-reads the files; when they changed and make a working config, new connections use it. Returns
    /// whether the served config changed.
    pub fn reload(&self) -> Result<bool, String> {
        let files = Files::read(&self.config)?;
        let unchanged = match self.current.read() {
            Ok(guard) => *guard.1 == files,
            Err(poisoned) => *poisoned.into_inner().1 == files,
        };
        if unchanged {
            return Ok(false);
        }
        let server = server_config(&self.config, &files, self.alpn)?;
        let fresh = (Arc::new(server), Arc::new(files));
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(true)
    }

    /// Re-reads the files every `reload_interval`, until the returned task is aborted. A failed reload is
    /// logged once per distinct failure and the old config stays served.
    pub fn spawn_reload(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let acceptor = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(acceptor.config.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_failure: Option<String> = None;
            loop {
                tick.tick().await;
                match acceptor.reload() {
                    Ok(true) => {
                        last_failure = None;
                        tracing::info!(cert_file = %acceptor.config.cert_file.display(), "TLS files reloaded");
                    }
                    Ok(false) => last_failure = None,
                    Err(error) if last_failure.as_ref() != Some(&error) => {
                        tracing::warn!(%error, "TLS files not reloaded; the previous certificate stays served");
                        last_failure = Some(error);
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

/// Accepts connections on `listener` (with [`super::accept`]'s socket options) and completes their TLS
/// handshakes concurrently; the finished ones arrive on the returned channel. Dropping the receiver stops
/// accepting and closes the listener.
pub fn handshakes(
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                () = tx.closed() => return,
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = super::accept(&listener) => accepted,
            };
            let tls = tokio_rustls::TlsAcceptor::from(acceptor.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The gRPC face's TLS connections (for tonic's `serve_with_incoming*`). tonic reads the peer's address
/// and certificates from each stream.
pub fn incoming(
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
) -> impl futures_util::Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static {
    futures_util::stream::unfold(handshakes(listener, acceptor), |mut rx| async move {
        let (stream, _) = rx.recv().await?;
        Some((Ok(stream), rx))
    })
}

/// What the HTTP face knows of a TLS peer: its address and its verified certificate, if it sent one.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    /// The peer's socket address.
    pub addr: SocketAddr,
    /// Its client certificate, verified against the CA bundle during the handshake.
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// The HTTP face's TLS listener (for `axum::serve`).
#[derive(Debug)]
pub struct Listener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl Listener {
    /// Serves TLS on `listener` with `acceptor`'s current config.
    pub fn new(listener: TcpListener, acceptor: Arc<Acceptor>) -> io::Result<Listener> {
        let local = listener.local_addr()?;
        Ok(Listener { rx: handshakes(listener, acceptor), local })
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some((stream, addr)) => {
                let certificate = peer_certificate(stream.get_ref().1.peer_certificates()).map(Arc::new);
                (stream, TlsPeer { addr, certificate })
            }
            // The handshake task ends only when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<TlsPeer> {
        Ok(TlsPeer { addr: self.local, certificate: None })
    }
}

/// The identities and thumbprint of the leaf of a verified client certificate chain. rustls has already
/// checked the chain against the CA bundle; this only reads the leaf's subject alternative names.
pub fn peer_certificate(chain: Option<&[CertificateDer<'_>]>) -> Option<PeerCertificate> {
    let leaf = chain?.first()?;
    let parsed = webpki::EndEntityCert::try_from(leaf).ok()?;
    let identities = parsed.valid_uri_names().chain(parsed.valid_dns_names()).map(str::to_string).collect();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    Some(PeerCertificate { identities, sha256 })
}
