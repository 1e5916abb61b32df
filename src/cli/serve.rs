//! `tessera serve`: reads the config (or sets up dev mode), starts logging and telemetry, builds the broker
//! through the composition root, and serves the gRPC and HTTP faces until Ctrl-C or SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tessera::config::{Config, ConfigBuilder, LogFormat};
use tessera::serve::reload;
use tessera::{dev, serve, telemetry};

use super::runtime;

/// Command-line flags that override the config file (at start and at every reload alike).
#[derive(Clone, Default)]
pub(super) struct Overrides {
    pub(super) grpc_addr: Option<String>,
    pub(super) http_addr: Option<String>,
    pub(super) proxy_addr: Option<String>,
    pub(super) redis_url: Option<String>,
}

impl Overrides {
    fn apply(&self, builder: &mut ConfigBuilder) {
        if self.grpc_addr.is_some() {
            builder.server.grpc_addr.clone_from(&self.grpc_addr);
        }
        if self.http_addr.is_some() {
            builder.server.http_addr.clone_from(&self.http_addr);
        }
        if self.proxy_addr.is_some() {
            builder.proxy.listen.clone_from(&self.proxy_addr);
        }
        if let Some(url) = &self.redis_url {
            builder.store.redis_url = Some(url.clone().into());
        }
    }
}

pub(super) fn load_config(file: &Path, overrides: Overrides) -> Result<Config, String> {
    let (_, loaded) = source(file, overrides).load();
    loaded.map(|l| l.config).map_err(|e| e.to_string())
}

/// The config file with the overrides applied to every load of it.
fn source(file: &Path, overrides: Overrides) -> reload::Source {
    reload::Source::new(file.to_path_buf(), Arc::new(move |builder| overrides.apply(builder)))
}

pub(super) fn serve(config: Option<&Path>, overrides: Overrides, dev_dir: &Path) -> Result<ExitCode, String> {
    let (mut config, reloading) = match &config {
        Some(file) => {
            let source = source(file, overrides);
            let (digest, loaded) = source.load();
            let loaded = loaded.map_err(|e| e.to_string())?;
            (loaded.config, Some((source, loaded.fixed, digest)))
        }
        None => {
            let Overrides { grpc_addr, http_addr, redis_url, .. } = overrides;
            (dev::config(dev_dir, grpc_addr, http_addr, redis_url).map_err(|e| e.to_string())?, None)
        }
    };
    let settings = config.server;
    let tls = config.tls.clone();
    let proxy = config.proxy.take();
    let secrets = std::mem::take(&mut config.secrets);
    let databases = std::mem::take(&mut config.databases);
    runtime()?.block_on(async move {
        let telemetry = telemetry::init(&config.log, &config.telemetry)?;
        if reloading.is_none() {
            tracing::warn!("{}", dev::WARNING);
            if config.log.format == LogFormat::Text {
                eprintln!("\n  !!! {} !!!\n", dev::WARNING);
            }
        }
        let broker = Arc::new(serve::broker(config, tessera::metrics::Metrics::global()).await?);
        // SIGHUP is handled from here on (before the faces listen), so it never ends the process.
        let reloads = match reloading {
            Some((source, fixed, digest)) => serve::reload::Reloader::new(Arc::clone(&broker), source, fixed, digest)
                .spawn(settings.config_reload_interval),
            None => serve::reload::spawn_dev_hangup(&broker),
        };
        let (grpc, http) = (bind(settings.grpc_addr).await?, bind(settings.http_addr).await?);
        // One signal stops every face: gRPC drains in-flight RPCs, HTTP and the proxy finish their requests.
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let proxy = match proxy {
            None => None,
            Some(config) => {
                let listener = bind(config.listen).await?;
                let (proxy, refresh) = serve::proxy(config, secrets, databases, &broker)?;
                let mut stopped = stop.subscribe();
                let until = async move {
                    let _ = stopped.changed().await;
                };
                Some((tokio::spawn(tessera::proxy::serve(listener, Arc::clone(&broker), proxy, until)), refresh))
            }
        };
        let http_stopped = async move {
            let _ = stopped.changed().await;
        };
        let http = tokio::spawn(tessera::http::serve_with_tls(
            http,
            Arc::clone(&broker),
            telemetry.registry.clone(),
            tls.clone(),
            http_stopped,
        ));
        let grpc_stopped = async move {
            serve::shutdown_signal().await;
            let _ = stop.send(true);
        };
        let served = serve::run_with_tls(grpc, broker, settings, tls, grpc_stopped).await.map_err(|e| e.to_string());
        reloads.abort();
        let _ = http.await;
        if let Some((proxy, tasks)) = proxy {
            let _ = proxy.await;
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
        }
        telemetry.shutdown();
        served
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("{addr}: {e}"))
}
