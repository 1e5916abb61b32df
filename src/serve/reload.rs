//! Reloading the configuration without a restart: the policy, the catalog (with its routes), the issuers
//! (with their JWKS sources) and the clients are replaced whole, on SIGHUP and when the config file or a file
//! it names changes on disk.
//!
//! A reload is the load at start again — [`ConfigBuilder::load`] with the same environment and command-line
//! overrides, then [`ConfigBuilder::build`]'s full validation (the Cedar schema check of the policy
//! included) — so a file that would not start the broker is refused the same way, with every problem
//! listed. A refused reload changes nothing: the set in force keeps serving, an `error` log line gives the
//! problems, and `tessera.config.reloads{outcome="failed"}` counts it. A reload that took logs
//! `configuration reloaded` at `info` with the new counts and bumps `tessera.config.loaded`.
//!
//! The other sections are fixed at start ([`crate::config::FIXED_SECTIONS`]: listeners, identity, signing
//! keys, store, TLS settings, rate limits, telemetry, log). A reload that would change one is refused whole,
//! naming the sections that need a restart: taking the rest while keeping those would put in force a mix of
//! two files that was never validated together.
//!
//! Changes are noticed by content, not by file times: Kubernetes updates a mounted ConfigMap by swapping a
//! `..data` symlink, which changes neither the path nor, reliably, the mtime of what is read. Every
//! `server.config_reload_interval` the config file and each file it names are read and hashed; a digest that
//! differs from the last one seen triggers a reload (once per distinct content, so a bad file is reported
//! once, not at every tick). SIGHUP reloads at once, whatever the digest.
//!
//! Serving never waits on a reload: the new set is built and its `jwks_url` keys fetched off to the side,
//! then swapped in atomically ([`Broker::replace`]); requests under way finish with the set they began with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::config::{Config, ConfigBuilder, ConfigErrors, FixedSections};
use crate::token::Keyring;

/// Adjusts a freshly read config before it is validated: the command-line overrides, applied to every load
/// the same way as at start.
pub type Prepare = Arc<dyn Fn(&mut ConfigBuilder) + Send + Sync>;

/// Where the configuration comes from: the file, and the overrides applied to each load of it.
#[derive(Clone)]
pub struct Source {
    file: PathBuf,
    prepare: Prepare,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("file", &self.file).finish_non_exhaustive()
    }
}

/// SHA-256 of the config file and the files it names, as they were read.
pub type Digest = [u8; 32];

/// A config read and validated, with what a reload compares it by.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Its fixed sections as read.
    pub fixed: FixedSections,
}

impl Source {
    /// The config at `file`, each load adjusted by `prepare`.
    pub fn new(file: PathBuf, prepare: Prepare) -> Source {
        Source { file, prepare }
    }

    /// The folder relative paths in the config resolve against.
    fn base_dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    /// Reads and validates the config as at start; with the digest of the files as they were just before
    /// (so a change made during the load is noticed by the next check).
    pub fn load(&self) -> (Digest, Result<Loaded, ConfigErrors>) {
        let digest = self.digest();
        let loaded = ConfigBuilder::load_with_fixed(&self.file).and_then(|(mut builder, fixed)| {
            (self.prepare)(&mut builder);
            Ok(Loaded { config: builder.build(self.base_dir())?, fixed })
        });
        (digest, loaded)
    }

    /// The digest of the config file and of every file it names ([`ConfigBuilder::named_files`]) as they are
    /// now, each with its path; a file that cannot be read counts as absent, so its return is a change too.
    /// A config that does not parse names no files: its own bytes are the digest.
    pub fn digest(&self) -> Digest {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut add = |path: &Path| {
            let path_bytes = path.as_os_str().as_encoded_bytes();
            context.update(&(path_bytes.len() as u64).to_be_bytes());
            context.update(path_bytes);
            match std::fs::read(path) {
                Ok(content) => {
                    // Signing keys are among the files: their bytes do not outlive the hashing.
                    let content = zeroize::Zeroizing::new(content);
                    context.update(&[1]);
                    context.update(&(content.len() as u64).to_be_bytes());
                    context.update(&content);
                }
                Err(_) => context.update(&[0]),
            }
        };
        add(&self.file);
        if let Ok(builder) = ConfigBuilder::load(&self.file) {
            for file in builder.named_files(self.base_dir()) {
                add(&file);
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }
}

/// What set off a reload, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The config file or a file it names changed on disk.
    FileChange,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// What a reload put in force, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Upstream issuers now trusted.
    pub issuers: usize,
    /// Audiences now catalogued.
    pub audiences: usize,
    /// Forward-auth routes.
    pub routes: usize,
    /// Clients that may call.
    pub clients: usize,
}

/// What the last reload attempt compared against: the fixed sections of the config in force and the digest
/// of the files last seen (in force or refused).
struct Seen {
    fixed: FixedSections,
    digest: Digest,
}

/// Reloads one broker's configuration from its [`Source`].
pub struct Reloader {
    broker: Arc<Broker>,
    source: Source,
    /// Held for the whole of a reload, so SIGHUP and the watch never run two at once. Never touched by a
    /// request.
    seen: tokio::sync::Mutex<Seen>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reloads `broker`, which was built from a config `source` loaded with `fixed` sections from files with
    /// `digest` ([`Source::load`]).
    pub fn new(broker: Arc<Broker>, source: Source, fixed: FixedSections, digest: Digest) -> Arc<Reloader> {
        broker.metrics().config_loaded.record(crate::clock::now(), &[]);
        Arc::new(Reloader { broker, source, seen: tokio::sync::Mutex::new(Seen { fixed, digest }) })
    }

    /// Reloads now: validates the config on disk and, if it passes and changes no fixed section, puts its
    /// issuers, catalog, policy and clients in force. Logs and counts the outcome either way.
    pub async fn reload(&self, trigger: Trigger) -> Result<Reloaded, Vec<String>> {
        let mut seen = self.seen.lock().await;
        let source = self.source.clone();
        let (digest, loaded) = match tokio::task::spawn_blocking(move || source.load()).await {
            Ok(read) => read,
            Err(e) => (seen.digest, Err(ConfigErrors(vec![format!("the config could not be read: {e}")]))),
        };
        seen.digest = digest;
        let outcome = match loaded {
            Err(errors) => Err(errors.0),
            Ok(loaded) => self.apply(&mut seen, loaded).await,
        };
        let config_digest = hex::encode(&digest[..6]);
        match &outcome {
            Ok(r) => tracing::info!(
                trigger = trigger.as_str(),
                config_digest,
                issuers = r.issuers,
                audiences = r.audiences,
                routes = r.routes,
                clients = r.clients,
                "configuration reloaded"
            ),
            Err(problems) => tracing::error!(
                trigger = trigger.as_str(),
                config_digest,
                problems = problems.join("; "),
                "configuration not reloaded; the configuration in force stays"
            ),
        }
        self.broker.metrics().config_reload(outcome.is_ok(), crate::clock::now());
        outcome
    }

    /// Puts a loaded config's reloadable parts in force, unless it changes a fixed section.
    async fn apply(&self, seen: &mut Seen, loaded: Loaded) -> Result<Reloaded, Vec<String>> {
        let Loaded { mut config, fixed } = loaded;
        let changed = seen.fixed.changed(&fixed);
        let mut problems = restart_needed(&changed);
        // The key files' contents, not only their paths, are fixed: the broker keeps signing with the keys
        // it started with.
        if !changed.contains(&"signing") {
            let same = Keyring::new(std::mem::take(&mut config.signing_keys))
                .is_ok_and(|keys| keys.jwks_json() == self.broker.keyring().jwks_json());
            if !same {
                problems.push(
                    "signing.keys: the key files changed; signing keys are fixed at start: restart tessera to \
                     sign with them"
                        .into(),
                );
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let snapshot = super::snapshot(config.into(), self.broker.keyring(), self.broker.metrics());
        snapshot.issuers.adopt_keys(self.broker.snapshot().issuers());
        crate::issuer::jwks::warm_up(&snapshot.issuers).await;
        let reloaded = Reloaded {
            issuers: snapshot.issuers.len(),
            audiences: snapshot.catalog.len(),
            routes: snapshot.catalog.routes(),
            clients: snapshot.clients.iter().count(),
        };
        self.broker.replace(snapshot);
        seen.fixed = fixed;
        Ok(reloaded)
    }

    /// Reloads if the files changed since they were last seen: the watch's check.
    pub async fn reload_if_changed(&self) -> Option<Result<Reloaded, Vec<String>>> {
        let source = self.source.clone();
        let digest = tokio::task::spawn_blocking(move || source.digest()).await.ok()?;
        if digest == self.seen.lock().await.digest {
            return None;
        }
        Some(self.reload(Trigger::FileChange).await)
    }

    /// Reloads on every SIGHUP and, with an `interval`, whenever the files change, until the returned task is
    /// aborted. The SIGHUP handler is in place when this returns.
    pub fn spawn(self: &Arc<Self>, interval: Option<Duration>) -> tokio::task::JoinHandle<()> {
        let mut hangup = Hangup::new();
        let reloader = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = interval.map(|every| {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            loop {
                let ticked = async {
                    match &mut tick {
                        Some(tick) => {
                            tick.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = hangup.recv() => {
                        let _ = reloader.reload(Trigger::Signal).await;
                    }
                    () = ticked => {
                        let _ = reloader.reload_if_changed().await;
                    }
                }
            }
        })
    }
}

/// The problem a reload that changes fixed sections is refused with.
fn restart_needed(changed: &[&str]) -> Vec<String> {
    if changed.is_empty() {
        return Vec::new();
    }
    let sections: Vec<String> = changed.iter().map(|s| format!("[{s}]")).collect();
    vec![format!(
        "{} changed: fixed at start, so nothing was reloaded; restart tessera to apply them, or undo the change \
         to reload the rest",
        sections.join(", ")
    )]
}

/// In dev mode there is no file to reload: SIGHUP is logged and otherwise ignored (rather than ending the
/// process, its default action). Until the returned task is aborted.
pub fn spawn_dev_hangup(broker: &Broker) -> tokio::task::JoinHandle<()> {
    broker.metrics().config_loaded.record(crate::clock::now(), &[]);
    let mut hangup = Hangup::new();
    tokio::spawn(async move {
        loop {
            hangup.recv().await;
            tracing::warn!("SIGHUP: dev mode has no configuration file to reload; nothing changed");
        }
    })
}

/// SIGHUP, where there is one.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
            if let Err(error) = &signal {
                tracing::warn!(%error, "SIGHUP cannot be handled: only a change on disk reloads the configuration");
            }
            Hangup { signal: signal.ok() }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::keys::{SigningAlgorithm, SigningKey};

    const CRM: &str = "https://crm.example";
    const NEW: &str = "https://new.example";

    fn key_pem() -> String {
        let (_, pem) = SigningKey::generate(SigningAlgorithm::EdDSA).unwrap();
        pem.expose().to_string()
    }

    /// A config folder: a signing key, a policy and `tessera.toml` with `extra` appended.
    fn write(dir: &Path, extra: &str) {
        if !dir.join("key.pem").exists() {
            std::fs::write(dir.join("key.pem"), key_pem()).unwrap();
        }
        std::fs::write(dir.join("policy.cedar"), crate::policy::DEFAULT_POLICY).unwrap();
        let config = format!(
            "[broker]\nissuer = \"https://tessera.test\"\n[signing]\nkeys = [\"key.pem\"]\n[policy]\nfile = \
             \"policy.cedar\"\n[[audiences]]\nid = \"{CRM}\"\nscopes = [\"crm:read\"]\nmax_ttl = 300\n{extra}"
        );
        std::fs::write(dir.join("tessera.toml"), config).unwrap();
    }

    const NEW_AUDIENCE: &str = "[[audiences]]\nid = \"https://new.example\"\nscopes = [\"new:read\"]\nmax_ttl = 60\n";

    async fn reloader(dir: &Path) -> (Arc<Broker>, Arc<Reloader>) {
        let source = Source::new(dir.join("tessera.toml"), Arc::new(|_| {}));
        let (digest, loaded) = source.load();
        let loaded = loaded.unwrap();
        let broker = Arc::new(super::super::broker(loaded.config, crate::metrics::Metrics::global()).await.unwrap());
        let reloader = Reloader::new(Arc::clone(&broker), source, loaded.fixed, digest);
        (broker, reloader)
    }

    #[tokio::test]
    async fn a_request_keeps_the_set_it_loaded_while_a_reload_swaps_in_the_next() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "");
        let (broker, reloader) = reloader(dir.path()).await;
        let mut changes = broker.subscribe();
        let before = broker.current();
        write(dir.path(), NEW_AUDIENCE);
        let reloaded = reloader.reload(Trigger::Signal).await.unwrap();
        assert_eq!(reloaded, Reloaded { issuers: 0, audiences: 2, routes: 0, clients: 0 });
        assert!(changes.has_changed().unwrap(), "followers of the snapshot are told");
        changes.borrow_and_update();
        // The request under way still sees the set it began with; the next one sees the new set.
        assert!(before.catalog().audience(NEW).is_none());
        assert!(before.catalog().audience(CRM).is_some());
        assert!(broker.current().catalog().audience(NEW).is_some());
        // Nothing changed on disk: the watch does not reload.
        assert!(reloader.reload_if_changed().await.is_none());
        assert!(!changes.has_changed().unwrap());
    }

    #[tokio::test]
    async fn a_change_to_a_fixed_section_is_refused_whole_and_names_the_section() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "");
        let (broker, reloader) = reloader(dir.path()).await;
        write(
            dir.path(),
            &format!("[server]\nmax_request_bytes = 100000\n[rate_limits]\nclient_per_minute = 5\n{NEW_AUDIENCE}"),
        );
        let problems = reloader.reload_if_changed().await.unwrap().unwrap_err().join("\n");
        assert!(problems.contains("[server], [rate_limits] changed") && problems.contains("restart"), "{problems}");
        assert!(broker.current().catalog().audience(NEW).is_none(), "the reloadable part is not taken either");
        // The same content is not tried again at every check.
        assert!(reloader.reload_if_changed().await.is_none());

        // Reloadable `[broker]` keys are taken; the others are fixed.
        write(dir.path(), NEW_AUDIENCE);
        assert!(reloader.reload(Trigger::Signal).await.is_ok());
        assert!(broker.current().catalog().audience(NEW).is_some());
        let toml = std::fs::read_to_string(dir.path().join("tessera.toml")).unwrap();
        let toml = toml
            .replace("issuer = \"https://tessera.test\"", "issuer = \"https://tessera.test\"\ntask_token_max_ttl = 60");
        std::fs::write(dir.path().join("tessera.toml"), &toml).unwrap();
        assert!(reloader.reload(Trigger::Signal).await.is_ok(), "task_token_max_ttl reloads");
        std::fs::write(dir.path().join("tessera.toml"), toml.replace("task_token_max_ttl = 60", "leeway = 10"))
            .unwrap();
        let problems = reloader.reload(Trigger::Signal).await.unwrap_err().join("\n");
        assert!(problems.contains("[broker] changed"), "{problems}");
    }

    #[tokio::test]
    async fn new_signing_key_contents_need_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "");
        let (broker, reloader) = reloader(dir.path()).await;
        let jwks = broker.keyring().jwks_json().to_string();
        std::fs::write(dir.path().join("key.pem"), key_pem()).unwrap();
        write(dir.path(), NEW_AUDIENCE);
        let problems = reloader.reload_if_changed().await.unwrap().unwrap_err().join("\n");
        assert!(problems.contains("signing.keys") && problems.contains("restart"), "{problems}");
        assert!(!problems.contains("PRIVATE KEY"), "{problems}");
        assert_eq!(broker.keyring().jwks_json(), jwks);
        assert!(broker.current().catalog().audience(NEW).is_none());
    }

    #[test]
    fn the_digest_follows_the_content_of_every_named_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "");
        let source = Source::new(dir.path().join("tessera.toml"), Arc::new(|_| {}));
        let first = source.digest();
        assert_eq!(source.digest(), first, "same content, same digest");
        std::fs::write(dir.path().join("policy.cedar"), format!("{}\n// a comment\n", crate::policy::DEFAULT_POLICY))
            .unwrap();
        let second = source.digest();
        assert_ne!(second, first, "a named file's content counts");
        std::fs::remove_file(dir.path().join("policy.cedar")).unwrap();
        assert_ne!(source.digest(), second, "a missing file counts");
        std::fs::write(dir.path().join("tessera.toml"), "not toml [").unwrap();
        let broken = source.digest();
        assert_eq!(source.digest(), broken, "a config that does not parse still has a digest");
    }
}
