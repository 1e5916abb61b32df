//! Secrets read from files: one file a secret, re-read every `reload_interval` and compared by content, so
//! a Kubernetes Secret volume's atomic `..data` symlink swap, a Vault Agent template re-render or an edit in
//! place are all noticed whatever the file times say (the path is opened anew on each read, so a swapped
//! symlink is followed). A file that cannot be read, or whose content is refused ([`super::check_value`]),
//! is reported by name and path — never by content — and the last good value stays in force.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::SecretSource;
use crate::secret::Credential;

/// One secret: its name (what routes and databases refer to) and the file holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFile {
    /// The name the configuration refers to it by.
    pub name: String,
    /// The file; its whole content (less trailing whitespace) is the secret.
    pub path: PathBuf,
}

/// Secrets from files, kept current by [`FileSecrets::spawn_refresh`].
pub struct FileSecrets {
    files: Vec<SecretFile>,
    values: ArcSwap<HashMap<String, Arc<Credential>>>,
}

impl std::fmt::Debug for FileSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSecrets").field("files", &self.files).finish_non_exhaustive()
    }
}

/// Reads one file into a credential; the error names the path and the problem, never the content.
pub fn read(file: &SecretFile) -> Result<Credential, String> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(&file.path).map_err(|e| format!("secret `{}` ({}): {e}", file.name, file.path.display()))?,
    );
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("secret `{}` ({}): not UTF-8", file.name, file.path.display()))?;
    let value = super::normalise(text);
    super::check_value(value).map_err(|why| format!("secret `{}` ({}): {why}", file.name, file.path.display()))?;
    Ok(Credential::new(value))
}

impl FileSecrets {
    /// Reads every file now; fails (naming each file that cannot be used) when one cannot, so a broker never
    /// starts without a credential its routes need.
    pub fn load(files: Vec<SecretFile>) -> Result<FileSecrets, String> {
        let mut values = HashMap::new();
        let mut problems = Vec::new();
        for file in &files {
            match read(file) {
                Ok(value) => {
                    values.insert(file.name.clone(), Arc::new(value));
                }
                Err(problem) => problems.push(problem),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(FileSecrets { files, values: ArcSwap::from_pointee(values) })
    }

    /// Re-reads every file; puts changed values in force at once (one swap) and returns the names of those
    /// that changed. Files that cannot be read keep their last good value and are logged.
    pub fn reload(&self) -> Vec<String> {
        let current = self.values.load();
        let mut next: Option<HashMap<String, Arc<Credential>>> = None;
        let mut changed = Vec::new();
        for file in &self.files {
            match read(file) {
                Ok(value) => {
                    let same = current.get(&file.name).is_some_and(|v| {
                        crate::secret::constant_time_eq(v.expose().as_bytes(), value.expose().as_bytes())
                    });
                    if !same {
                        next.get_or_insert_with(|| (**current).clone()).insert(file.name.clone(), Arc::new(value));
                        changed.push(file.name.clone());
                    }
                }
                Err(problem) => tracing::warn!(problem = %problem, "secret not re-read; the last good value stays"),
            }
        }
        if let Some(next) = next {
            self.values.store(Arc::new(next));
            for name in &changed {
                tracing::info!(secret = %name, "secret changed on disk: the new value is in force");
            }
        }
        changed
    }

    /// Re-reads the files every `interval` until the task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let secrets = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let secrets = Arc::clone(&secrets);
                // File reads block: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || secrets.reload()).await;
            }
        })
    }
}

impl SecretSource for FileSecrets {
    fn get(&self, name: &str) -> Option<Arc<Credential>> {
        self.values.load().get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &std::path::Path, name: &str) -> SecretFile {
        SecretFile { name: name.into(), path: dir.join(name) }
    }

    #[test]
    fn a_kubernetes_symlink_swap_is_followed_and_a_bad_file_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        // The layout kubelet writes: key -> ..data/key, ..data -> ..2026_v1 (swapped atomically).
        let v1 = dir.path().join("..v1");
        let v2 = dir.path().join("..v2");
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v1.join("api-key"), "sk_live_first\n").unwrap();
        std::fs::write(v2.join("api-key"), "sk_live_second\n").unwrap();
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/api-key", dir.path().join("api-key")).unwrap();
        let secrets = FileSecrets::load(vec![file(dir.path(), "api-key")]).unwrap();
        assert_eq!(secrets.get("api-key").unwrap().expose(), "sk_live_first");
        assert!(secrets.reload().is_empty(), "unchanged content is no change");

        std::os::unix::fs::symlink("..v2", dir.path().join("..data.tmp")).unwrap();
        std::fs::rename(dir.path().join("..data.tmp"), dir.path().join("..data")).unwrap();
        assert_eq!(secrets.reload(), vec!["api-key".to_string()]);
        assert_eq!(secrets.get("api-key").unwrap().expose(), "sk_live_second");

        // A half-written (empty) file, then a vanished one: the last good value stays.
        std::fs::write(v2.join("api-key"), "").unwrap();
        assert!(secrets.reload().is_empty());
        std::fs::remove_dir_all(&v2).unwrap();
        assert!(secrets.reload().is_empty());
        assert_eq!(secrets.get("api-key").unwrap().expose(), "sk_live_second");
        assert!(secrets.get("other").is_none());
    }

    #[test]
    fn a_missing_file_fails_the_load_naming_the_path_never_a_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good"), "hunter2-secret").unwrap();
        let err = FileSecrets::load(vec![file(dir.path(), "good"), file(dir.path(), "missing")]).unwrap_err();
        assert!(err.contains("secret `missing`") && err.contains("missing"), "{err}");
        assert!(!err.contains("hunter2"));
        let secrets = FileSecrets::load(vec![file(dir.path(), "good")]).unwrap();
        assert!(!format!("{secrets:?}").contains("hunter2"));
        assert!(!format!("{:?}", secrets.get("good")).contains("hunter2"));
    }
}
