//! `[[secrets]]`: the master credentials the broker uses on agents' behalf (the proxy's upstream keys), one
//! file each, re-read as they change ([`crate::secrets::file`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Context, Problems};
use crate::secrets::file::SecretFile;

/// How often secret files are re-read, by default (seconds).
pub const DEFAULT_SECRET_RELOAD_INTERVAL: u64 = 10;

/// One secret as read; see docs/config.md `[[secrets]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretBuilder {
    /// The name routes refer to it by.
    pub name: String,
    /// The file holding it (relative to the config's folder).
    pub file: Option<PathBuf>,
    /// Seconds between re-reads (default [`DEFAULT_SECRET_RELOAD_INTERVAL`]); all files are re-read at the
    /// shortest interval any of them asks for.
    pub reload_interval: Option<u64>,
}

/// The validated secrets and how often they are re-read. Each file is read now, so `tessera config check`
/// proves it can be used; the value itself is dropped again (the running broker reads its own).
pub(super) fn build(
    builders: Vec<SecretBuilder>,
    cx: &Context<'_>,
    problems: &mut Problems,
) -> (Vec<SecretFile>, Duration) {
    let mut files: Vec<SecretFile> = Vec::new();
    let mut interval = u64::MAX;
    for (i, s) in builders.into_iter().enumerate() {
        let at = format!("secrets[{i}] ({})", s.name);
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            problems.push(format!("{at}: `name` must be letters, digits, `-`, `_` or `.`"));
        }
        if files.iter().any(|f| f.name == s.name) {
            problems.push(format!("{at}: duplicate `name`"));
        }
        let reload = s.reload_interval.unwrap_or(DEFAULT_SECRET_RELOAD_INTERVAL);
        if reload == 0 {
            problems.push(format!("{at}: `reload_interval` must be at least 1 second"));
        }
        interval = interval.min(reload.max(1));
        let Some(path) = s.file else {
            problems.push(format!("{at}: needs `file`"));
            continue;
        };
        let file = SecretFile { name: s.name, path: cx.path(&path) };
        if let Err(problem) = crate::secrets::file::read(&file) {
            problems.push(problem);
        }
        files.push(file);
    }
    let interval = if files.is_empty() { DEFAULT_SECRET_RELOAD_INTERVAL } else { interval };
    (files, Duration::from_secs(interval))
}
