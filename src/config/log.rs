//! `[log]`: the log format and level.

use serde::Deserialize;

use super::Problems;

/// The log level (or filter directive), by default.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// `[log]` as read; see docs/config.md `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogBuilder {
    /// `"text"` or `"json"` (default `"text"`).
    pub format: Option<LogFormat>,
    /// A level or a tracing filter directive (default `"info"`); `RUST_LOG` replaces it.
    pub level: Option<String>,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object a line, the event's fields at the top level: for log pipelines and SIEMs.
    Json,
}

/// The validated `[log]` section.
#[derive(Debug)]
pub struct LogConfig {
    /// How lines are written.
    pub format: LogFormat,
    /// The filter directive, already checked to parse (`RUST_LOG` is applied when logging starts).
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
