//! The composition root: [`broker`] builds the infrastructure a validated [`Config`] asks for (the revocation
//! store, the audit stream writer, the JWKS fetcher) and hands it to the core as ports; [`run`] serves the
//! gRPC face — with health and reflection — on a listener the caller bound, until `shutdown`.
//!
//! [`reload`] keeps the broker's issuers, catalog, policy and clients current with the config on disk.
//!
//! Taking a bound listener (not an address) lets tests bind `127.0.0.1:0` and learn the port first.
//! Connections are accepted by [`crate::net`], which sets `TCP_NODELAY` on each.

pub mod reload;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::approval::{Announcer, Ledger, Silent, webhook};
use crate::audit::Audit;
use crate::broker::{Broker, Fixed, Parts, Snapshot};
use crate::catalog::Catalog;
use crate::client::Clients;
use crate::config::{Config, ServerConfig};
use crate::grpc::TokenBrokerService;
use crate::grpc::pb::{self, token_broker_server::TokenBrokerServer};
use crate::issuer::Issuers;
use crate::issuer::jwks::JwksFetcher;
use crate::metrics::Metrics;
use crate::net::tls::{Acceptor, TlsConfig};
use crate::revocation::Store;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::token::Keyring;

/// Any error [`run`] can end with: the reflection service failing to build, or the gRPC server failing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a configuration reload replaces, taken out of a validated [`Config`]: the issuers, the catalog
/// (audiences, routes, who may introspect task tokens, the task token lifetime), the policy and the clients
/// (with how they may authenticate). [`snapshot`] builds a [`Snapshot`] of it, at start and at each reload.
pub struct Reloadable {
    broker_issuer: String,
    leeway: u64,
    task_token_max_ttl: u64,
    task_introspect_clients: std::collections::BTreeSet<String>,
    issuers: Vec<(crate::issuer::IssuerSpec, crate::token::keys::KeySet)>,
    audiences: Vec<crate::catalog::Audience>,
    routes: Vec<crate::catalog::Route>,
    policy: crate::policy::Policy,
    clients: Vec<crate::client::Client>,
    client_auth: crate::client::ClientAuth,
}

impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable").field("broker_issuer", &self.broker_issuer).finish_non_exhaustive()
    }
}

impl From<Config> for Reloadable {
    fn from(config: Config) -> Reloadable {
        let Config {
            broker_issuer,
            leeway,
            task_token_max_ttl,
            task_introspect_clients,
            issuers,
            audiences,
            routes,
            policy,
            clients,
            client_auth,
            ..
        } = config;
        Reloadable {
            broker_issuer,
            leeway,
            task_token_max_ttl,
            task_introspect_clients,
            issuers,
            audiences,
            routes,
            policy,
            clients,
            client_auth,
        }
    }
}

/// Builds the reloadable parts of a broker: the issuers verify tessera's own tokens with `keyring` (the
/// broker's, fixed at start) and record into `metrics`. URL-sourced JWKS start empty: fetch them
/// ([`crate::issuer::jwks::warm_up`]) before the snapshot serves.
pub fn snapshot(parts: Reloadable, keyring: &Keyring, metrics: &Metrics) -> Snapshot {
    let fetcher = Arc::new(JwksFetcher::new(parts.issuers.iter().map(|(spec, _)| spec)));
    let issuers =
        Issuers::new(parts.issuers, keyring, parts.broker_issuer.clone(), parts.leeway, metrics.clone(), fetcher);
    Snapshot {
        issuers: Arc::new(issuers),
        catalog: Catalog::new(parts.audiences, parts.broker_issuer, parts.task_token_max_ttl)
            .with_routes(parts.routes)
            .with_task_introspect_clients(parts.task_introspect_clients),
        policy: parts.policy,
        clients: Clients::new(parts.clients).with_auth(parts.client_auth),
    }
}

/// Builds the broker from `config`, recording into `metrics`. With Redis configured, connects lazily (and, in
/// mirror mode, starts following the revocation channel), so it must run inside a Tokio runtime; a Redis that
/// is down at start makes the broker fail closed until it is back, rather than fail to start.
pub async fn broker(config: Config, metrics: Metrics) -> Result<Broker, String> {
    // Redis over TLS (rediss://) and JWKS over https use rustls: one crypto provider, set before any use.
    crate::install_crypto_provider();
    let Config {
        server,
        broker_issuer,
        leeway,
        limits,
        task_token_max_ttl,
        task_introspect_clients,
        task_revocation_retention,
        dpop,
        signing_keys,
        issuers,
        audiences,
        clients,
        client_auth,
        routes,
        policy,
        store,
        tls: _,
        rate_limits,
        approvals,
        telemetry: _,
        log: _,
        secrets: _,
        proxy: _,
        databases: _,
        watch,
        status_list,
        ssf_receivers,
        ssf_transmitters,
    } = config;
    let keyring = Arc::new(Keyring::new(signing_keys)?);
    let reloadable = Reloadable {
        broker_issuer: broker_issuer.clone(),
        leeway,
        task_token_max_ttl,
        task_introspect_clients,
        issuers,
        audiences,
        routes,
        policy,
        clients,
        client_auth,
    };
    let snapshot = snapshot(reloadable, &keyring, &metrics);
    // One store behind both ports: the revocation list and the approvals ledger.
    let (store, ledger, audit): (Arc<dyn Store>, Arc<dyn Ledger>, Audit) = match &store {
        None => {
            let log = usize::try_from(watch.max_events).unwrap_or(usize::MAX);
            let store = Arc::new(MemoryStore::with_log(log));
            (store.clone(), store, Audit::log_only())
        }
        Some(settings) => {
            let store = Arc::new(
                RedisStore::connect_with_lag_histogram(settings, Some(metrics.mirror_lag.clone()))?
                    .with_log_max_events(watch.max_events),
            );
            let (audit, events) = Audit::with_stream(metrics.clone());
            crate::audit::stream::spawn_writer(settings, events, metrics.audit_dropped.clone())?;
            (store.clone(), store, audit)
        }
    };
    // The webhook's delivery task ends when the broker (holding its queue) is dropped.
    let announcer: Arc<dyn Announcer> = match approvals.webhook {
        None => Arc::new(Silent),
        Some((url, secret)) => {
            let settings = webhook::Settings { url, secret, broker_issuer: broker_issuer.clone() };
            let (webhook, _task) = webhook::spawn(settings, metrics.clone())?;
            webhook
        }
    };
    // Status lists: each replica's pool of indices kept ahead, and its registrations written, in the background.
    let status_lists = status_list.map(|settings| {
        let (lists, registrations) = crate::status_list::StatusLists::new(&broker_issuer, settings.ttl);
        let lists = Arc::new(lists);
        tokio::spawn(crate::status_list::refill(Arc::clone(&lists), Arc::clone(&store)));
        tokio::spawn(crate::status_list::write_registrations(registrations, Arc::clone(&store)));
        lists
    });
    // Shared Signals: a delivery task per push receiver (the replica holding its lease delivers).
    if !ssf_receivers.is_empty() {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("ssf: {e}"))?;
        for receiver in ssf_receivers.iter().filter(|r| matches!(r.delivery, crate::ssf::Delivery::Push { .. })) {
            tokio::spawn(crate::ssf::push::deliver(
                receiver.clone(),
                broker_issuer.clone(),
                Arc::clone(&keyring),
                Arc::clone(&store),
                client.clone(),
            ));
        }
    }
    Ok(Broker::new(Parts {
        snapshot,
        fixed: Fixed {
            broker_issuer,
            keyring,
            limits,
            leeway,
            task_revocation_retention,
            dpop,
            store,
            rate_limits,
            ledger,
            announcer,
            approvals: approvals.settings,
            audit: Arc::new(audit),
            metrics,
            slots: crate::load::Slots::new(
                server.max_concurrent_requests,
                server.max_queue_wait,
                server.request_timeout,
            ),
            watch_heartbeat: watch.heartbeat,
            status_lists,
            ssf: crate::ssf::Receivers::new(ssf_receivers),
            ssf_transmitters,
        },
    }))
}

/// Keeps the JWKS of the issuers in force current ([`crate::issuer::jwks::spawn_refresh`]), following the
/// broker's snapshot: when a reload replaces it, the old set's refresh tasks stop and the new set's start.
/// Ends (with its tasks) when aborted.
pub fn spawn_jwks_refresh(broker: Arc<Broker>) -> tokio::task::JoinHandle<()> {
    /// Aborts the tasks it holds when dropped, so aborting the follower stops them too.
    struct Tasks(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for Tasks {
        fn drop(&mut self) {
            self.0.iter().for_each(tokio::task::JoinHandle::abort);
        }
    }
    tokio::spawn(async move {
        let mut changes = broker.subscribe();
        loop {
            changes.borrow_and_update();
            let tasks = Tasks(crate::issuer::jwks::spawn_refresh(broker.snapshot().issuers()));
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            drop(tasks);
        }
    })
}

/// Serves the broker on `listener` in plaintext until `shutdown` completes, then stops accepting, reports
/// NOT_SERVING and lets in-flight RPCs finish.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    settings: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BoxError> {
    run_with_tls(listener, broker, settings, None, shutdown).await
}

/// As [`run`]; with `tls`, connections are TLS (and mTLS, with a client CA bundle), with the certificate
/// re-read as it changes.
pub async fn run_with_tls(
    listener: TcpListener,
    broker: Arc<Broker>,
    settings: ServerConfig,
    tls: Option<TlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BoxError> {
    let acceptor = tls.map(|tls| Acceptor::new(tls, crate::net::tls::ALPN_GRPC)).transpose()?;
    crate::install_crypto_provider();
    crate::issuer::jwks::warm_up(broker.snapshot().issuers()).await;
    let refresh = spawn_jwks_refresh(Arc::clone(&broker));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TokenBrokerServer<TokenBrokerService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcio's reflection client (Python) still speaks v1alpha only.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // The broker's RPCs, and only they, are limited in number: health checks and reflection always answer.
    let service = TokenBrokerServer::new(TokenBrokerService::new(Arc::clone(&broker), broker.slots().clone()))
        // Requests are small (tokens are bounded by issuer config); a large body is refused before decoding.
        .max_decoding_message_size(settings.max_request_bytes);

    tracing::info!(addr = %listener.local_addr()?, tls = acceptor.is_some(), "tessera serving gRPC");
    let draining = async {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight RPCs");
        health.set_not_serving::<TokenBrokerServer<TokenBrokerService>>().await;
    };
    let router = Server::builder()
        // Every RPC ends within the request timeout, whatever a peer or an upstream JWKS endpoint does.
        .timeout(settings.request_timeout)
        // Dead peers are noticed and their connections closed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let served = match acceptor {
        None => router.serve_with_incoming_shutdown(crate::net::incoming(listener), draining).await,
        Some(acceptor) => {
            let reload = acceptor.spawn_reload();
            let served =
                router.serve_with_incoming_shutdown(crate::net::tls::incoming(listener, acceptor), draining).await;
            reload.abort();
            served
        }
    };
    refresh.abort();
    served.map_err(Into::into)
}

/// Builds the credential-injecting proxy from its config: the secret files, read now and re-read in the
/// background, an HTTPS client per route, and for each database its logins, swept in the background against
/// `broker`'s revocations. Abort the returned tasks to stop the background work.
pub fn proxy(
    config: crate::config::proxy::ProxyConfig,
    secrets: (Vec<crate::secrets::file::SecretFile>, std::time::Duration),
    databases: Vec<crate::config::databases::DatabaseConfig>,
    broker: &Arc<Broker>,
) -> Result<(Arc<crate::proxy::Proxy>, Vec<tokio::task::JoinHandle<()>>), String> {
    let (files, interval) = secrets;
    let files = Arc::new(crate::secrets::file::FileSecrets::load(files)?);
    let mut tasks = vec![files.spawn_refresh(interval)];
    let mut logins: Vec<Arc<dyn crate::vend::Logins>> = Vec::new();
    for database in databases {
        let source: Arc<dyn crate::secrets::SecretSource> = files.clone();
        let postgres = Arc::new(crate::vend::postgres::PostgresLogins::new(database.spec, database.connection, source));
        tasks.push(postgres.spawn_sweeper(Arc::clone(broker), database.sweep_interval));
        logins.push(postgres);
    }
    match crate::proxy::Proxy::new(config, files) {
        Ok(proxy) => Ok((Arc::new(proxy.with_logins(logins)), tasks)),
        Err(e) => {
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
            Err(e)
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (how Kubernetes stops a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
