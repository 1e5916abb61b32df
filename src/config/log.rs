//! `[log]`: the log format and level.

use serde::Deserialize;

use super::Problems;

/// The log level (or filter directive), by default.
pub const DEFAULT_LOG_LEVEL: &str = "info";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogBuilder {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl LogBuilder {
    pub(super) fn build(self, problems: &mut Problems) -> LogConfig {
        let level = self.level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            problems.push(format!("log.level: `{level}` is not a level or filter directive"));
        }
        LogConfig { format: self.format.unwrap_or_default(), level }
    }
}
