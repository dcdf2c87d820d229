//! The first two validation passes: `[engine]` and `[storage]` settings, with the
//! command line's overrides applied before they are checked.
//!
//! `serve --shards`, `--fsync` and `--snapshot-interval` replace the file's value of a
//! setting ([`Overrides`]). They are applied to the raw values, before validation, so a
//! value is checked by one rule wherever it came from, at start and at every reload;
//! an error names where it came from: the file's setting with its line
//! (`engine.shards is 12, ...`), or the flag (`--shards is 12, ...`).
//!
//! Each pass adds its errors to the builder's list and returns the settings with the
//! default in place of every value that failed, so the later passes run and every error
//! of the config is reported at once.

use toml::Spanned;

use super::file::{RawEngine, RawStorage};
use super::{
    Builder, Diagnostic, EngineSettings, FsyncPolicy, Span, StorageSettings, MAX_EVENT_BYTES_LIMIT,
    MAX_VALUE_BYTES_LIMIT,
};

/// Settings given on the command line, which replace the file's values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    /// `--shards`: replaces `engine.shards`.
    pub shards: Option<u32>,
    /// `--fsync`: replaces `storage.fsync`.
    pub fsync: Option<FsyncPolicy>,
    /// `--snapshot-interval`, in seconds: replaces `storage.snapshot_interval_s`.
    pub snapshot_interval_s: Option<u64>,
}

/// A setting's value and where it came from, for its error.
struct Setting<T> {
    value: T,
    /// `engine.shards` or `--shards`.
    name: &'static str,
    /// The value's place in the file; `None` for a flag.
    span: Option<Span>,
}

/// The effective setting: the flag's value if it was given, else the file's, if any.
fn effective<T: Copy>(
    file: &Option<Spanned<T>>,
    setting: &'static str,
    flag: Option<T>,
    flag_name: &'static str,
) -> Option<Setting<T>> {
    match (flag, file) {
        (Some(value), _) => Some(Setting {
            value,
            name: flag_name,
            span: None,
        }),
        (None, Some(v)) => Some(Setting {
            value: *v.get_ref(),
            name: setting,
            span: Some(v.span()),
        }),
        (None, None) => None,
    }
}

impl Builder<'_> {
    fn setting_error<T>(&mut self, setting: &Setting<T>, message: String, help: Option<String>) {
        match &setting.span {
            Some(span) => self.error(span.clone(), message, help),
            None => {
                let mut d = Diagnostic::command_line(message);
                d.help = help;
                self.errors.push(d);
            }
        }
    }

    /// Pass 1: `[engine]`.
    pub(super) fn engine_settings(
        &mut self,
        raw: &RawEngine,
        overrides: &Overrides,
    ) -> EngineSettings {
        let mut engine = EngineSettings::default();
        if let Some(shards) = effective(&raw.shards, "engine.shards", overrides.shards, "--shards")
        {
            let n = shards.value;
            if !n.is_power_of_two() || n > 256 {
                self.setting_error(
                    &shards,
                    format!(
                        "{} is {n}, but it must be a power of two from 1 to 256",
                        shards.name
                    ),
                    Some(
                        "for example 16 (several shards per core keep lock contention low)".into(),
                    ),
                );
            } else {
                engine.shards = n;
            }
        }
        if let Some(b) = &raw.window_buckets {
            let n = *b.get_ref();
            if !(1..=64).contains(&n) {
                self.error(
                    b.span(),
                    format!("engine.window_buckets is {n}, but it must be from 1 to 64"),
                    None,
                );
            } else {
                engine.window_buckets = n;
            }
        }
        if let Some(d) = &raw.max_future_skew {
            engine.max_future_skew = self
                .duration(d, "engine.max_future_skew")
                .unwrap_or(engine.max_future_skew);
        }
        if let Some(n) = &raw.dedup_max_ids {
            if *n.get_ref() == 0 {
                self.error(
                    n.span(),
                    "engine.dedup_max_ids is 0; it must be at least 1 (turn deduplication off with dedup_window = \"0s\")",
                    None,
                );
            } else {
                engine.dedup_max_ids = *n.get_ref();
            }
        }
        if let Some(d) = &raw.dedup_window {
            engine.dedup_window = self
                .duration(d, "engine.dedup_window")
                .unwrap_or(engine.dedup_window);
        }
        if let Some(d) = &raw.recheck_interval {
            engine.recheck_interval = self
                .duration(d, "engine.recheck_interval")
                .unwrap_or(engine.recheck_interval);
        }
        engine.unknown_properties = raw.unknown_properties.unwrap_or_default();
        for (field, value, setting, limit) in [
            (
                "engine.max_value_bytes",
                &raw.max_value_bytes,
                &mut engine.max_value_bytes,
                MAX_VALUE_BYTES_LIMIT,
            ),
            (
                "engine.max_event_bytes",
                &raw.max_event_bytes,
                &mut engine.max_event_bytes,
                MAX_EVENT_BYTES_LIMIT,
            ),
        ] {
            if let Some(n) = value {
                if !(1..=limit).contains(n.get_ref()) {
                    self.error(
                        n.span(),
                        format!(
                            "{field} is {}, but it must be from 1 to {limit}",
                            n.get_ref()
                        ),
                        None,
                    );
                } else {
                    *setting = *n.get_ref();
                }
            }
        }
        engine
    }

    /// Pass 2: `[storage]`.
    pub(super) fn storage_settings(
        &mut self,
        raw: &RawStorage,
        overrides: &Overrides,
    ) -> StorageSettings {
        let mut storage = StorageSettings::default();
        if let Some(policy) = overrides.fsync.or(raw.fsync) {
            storage.fsync = policy;
        }
        if let Some(ms) = &raw.fsync_interval_ms {
            if !(1..=60_000).contains(ms.get_ref()) {
                self.error(
                    ms.span(),
                    format!(
                        "storage.fsync_interval_ms is {}, but it must be from 1 to 60000",
                        ms.get_ref()
                    ),
                    None,
                );
            } else {
                storage.fsync_interval = std::time::Duration::from_millis(*ms.get_ref());
            }
        }
        if let Some(mib) = &raw.segment_mib {
            if !(1..=4096).contains(mib.get_ref()) {
                self.error(
                    mib.span(),
                    format!(
                        "storage.segment_mib is {}, but it must be from 1 to 4096",
                        mib.get_ref()
                    ),
                    None,
                );
            } else {
                storage.segment_bytes = mib.get_ref() << 20;
            }
        }
        let interval = effective(
            &raw.snapshot_interval_s,
            "storage.snapshot_interval_s",
            overrides.snapshot_interval_s,
            "--snapshot-interval",
        );
        if let Some(s) = interval {
            if s.value > 7 * 86_400 {
                self.setting_error(
                    &s,
                    format!(
                        "{} is {}, but it must be at most 604800 (a week)",
                        s.name, s.value
                    ),
                    Some("0 turns snapshots by time off".into()),
                );
            } else {
                storage.snapshot_interval =
                    (s.value > 0).then(|| std::time::Duration::from_secs(s.value));
            }
        }
        if let Some(mib) = &raw.snapshot_log_mib {
            if *mib.get_ref() > 1 << 20 {
                self.error(
                    mib.span(),
                    format!(
                        "storage.snapshot_log_mib is {}, but it must be at most 1048576 (1 TiB)",
                        mib.get_ref()
                    ),
                    Some("0 turns snapshots by log volume off".into()),
                );
            } else {
                storage.snapshot_log_bytes = (*mib.get_ref() > 0).then(|| mib.get_ref() << 20);
            }
        }
        storage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Source};

    fn with(text: &str, overrides: Overrides) -> Result<Config, crate::config::ConfigError> {
        Config::from_source_with(&Source::new("t.toml", text), &overrides)
    }

    /// A small config with `settings` (tables) from its second line on.
    fn config(settings: &str) -> String {
        format!("channels = [\"web\"]\n{settings}\n[identity]\nnamespaces = [\"user\"]\n[events.page_view]\n")
    }

    #[test]
    fn a_flag_replaces_the_files_value() {
        let text = config(
            "[engine]\nshards = 4\n[storage]\nfsync = \"always\"\nsnapshot_interval_s = 60\n",
        );
        let config = with(&text, Overrides::default()).unwrap();
        assert_eq!(config.engine.shards, 4);
        let config = with(
            &text,
            Overrides {
                shards: Some(32),
                fsync: Some(FsyncPolicy::Never),
                snapshot_interval_s: Some(0),
            },
        )
        .unwrap();
        assert_eq!(config.engine.shards, 32);
        assert_eq!(config.storage.fsync, FsyncPolicy::Never);
        assert_eq!(config.storage.snapshot_interval, None);
    }

    #[test]
    fn a_bad_flag_is_named_with_the_files_errors() {
        let text = config("[engine]\nwindow_buckets = 0\n");
        let overrides = Overrides {
            shards: Some(12),
            snapshot_interval_s: Some(604_801),
            ..Overrides::default()
        };
        let errors = with(&text, overrides).unwrap_err().diagnostics;
        let messages: Vec<_> = errors.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "--shards is 12, but it must be a power of two from 1 to 256",
                "--snapshot-interval is 604801, but it must be at most 604800 (a week)",
                "engine.window_buckets is 0, but it must be from 1 to 64",
            ]
        );
        assert_eq!(errors[0].file, "the command line");
        assert_eq!(errors[2].line, 3);
    }

    #[test]
    fn without_a_flag_the_files_value_is_checked_in_place() {
        let text = config("[engine]\nshards = 12\n");
        let errors = with(&text, Overrides::default()).unwrap_err().diagnostics;
        assert_eq!(
            errors[0].message,
            "engine.shards is 12, but it must be a power of two from 1 to 256"
        );
        assert_eq!((errors[0].file.as_str(), errors[0].line), ("t.toml", 3));
    }
}
