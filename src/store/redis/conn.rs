//! The connection to Redis, standalone or Cluster: connected lazily, cloned cheaply per operation, and one
//! [`redis::aio::ConnectionLike`] for both kinds so every command, pipeline and script is written once.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::config::{Backend, RedisSettings};

/// A lazily connecting connection to the configured Redis, standalone or Cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    /// Connected on first use, so the broker starts while the cluster is still forming.
    Cluster(Arc<(tokio::sync::OnceCell<ClusterConnection>, ClusterClient)>),
}

/// The connection to use for one operation: a cheap clone, so no lock is held across the request.
pub(crate) enum Handle {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// One `match` for both kinds of connection; every command, pipeline and script then runs on a `Handle`.
impl redis::aio::ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Handle::Standalone(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Handle::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Standalone(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}

/// A Cluster connection's response timeout when the caller bounds each command itself.
const UNBOUNDED: Duration = Duration::from_secs(24 * 3600);

impl Conn {
    /// A lazily connecting connection to the configured Redis.
    pub(crate) fn open(settings: &RedisSettings) -> Result<Conn, String> {
        Conn::open_with_response_timeout(settings, Some(settings.timeout))
    }

    /// As [`Conn::open`], waiting up to `response_timeout` for a reply (`None`: as long as it takes, the caller
    /// bounding each command itself): for blocking reads (a watch stream's `XREAD BLOCK`), which need a
    /// connection of their own, as they hold the connection while they wait.
    pub(crate) fn open_with_response_timeout(
        settings: &RedisSettings,
        response_timeout: Option<Duration>,
    ) -> Result<Conn, String> {
        match &settings.backend {
            Backend::Standalone(url) => {
                let client = redis::Client::open(url.expose()).map_err(|e| format!("store.redis_url: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.timeout))
                    .set_response_timeout(response_timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
                Ok(Conn::Standalone(manager))
            }
            Backend::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(|n| n.expose().to_string()))
                    .connection_timeout(settings.timeout)
                    .response_timeout(response_timeout.unwrap_or(UNBOUNDED))
                    .retries(1)
                    .build()
                    .map_err(|e| format!("store.redis_cluster: {e}"))?;
                Ok(Conn::Cluster(Arc::new((tokio::sync::OnceCell::new(), client))))
            }
        }
    }

    pub(crate) async fn handle(&self) -> redis::RedisResult<Handle> {
        match self {
            Conn::Standalone(c) => Ok(Handle::Standalone(c.clone())),
            Conn::Cluster(cluster) => {
                let (cell, client) = &**cluster;
                let c = cell.get_or_try_init(|| client.get_async_connection()).await?;
                Ok(Handle::Cluster(c.clone()))
            }
        }
    }
}
