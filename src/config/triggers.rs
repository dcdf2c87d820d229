//! `[triggers]`: what the change stream records and for how long.
//!
//! The change stream (see `model::change`) records the membership changes of the
//! segments listed in `[triggers] stream`, and keeps them for `retention`. Only those
//! segments cost anything per change: a flip of any other segment is not recorded.
//!
//! ```toml
//! [triggers]
//! stream = ["cart_abandoners", "lapsed"]   # or ["*"]: every segment
//! retention = "7d"                         # the default
//! ```

use toml::Spanned;

use super::Builder;

/// Seven days, in seconds: how long changes are kept unless the config says otherwise.
pub const DEFAULT_RETENTION: u32 = 7 * 24 * 3600;

/// `[triggers]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTriggers {
    pub stream: Option<Spanned<Vec<Spanned<String>>>>,
    pub retention: Option<Spanned<String>>,
}

/// What the change stream records, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSettings {
    /// Per segment (config order): whether its changes are recorded.
    pub recorded: Vec<bool>,
    /// Seconds a change is kept.
    pub retention: u32,
}

impl Default for TriggerSettings {
    fn default() -> Self {
        TriggerSettings {
            recorded: Vec::new(),
            retention: DEFAULT_RETENTION,
        }
    }
}

impl TriggerSettings {
    /// Whether segment `segment`'s changes are recorded.
    #[inline]
    pub fn records(&self, segment: usize) -> bool {
        self.recorded.get(segment).copied().unwrap_or(false)
    }

    /// Whether any segment's changes are recorded.
    pub fn any(&self) -> bool {
        self.recorded.contains(&true)
    }
}

impl Builder<'_> {
    /// The `[triggers]` settings; `segments` are the names of the segments that
    /// compiled, in config order.
    pub(super) fn trigger_settings(
        &mut self,
        raw: &RawTriggers,
        segments: &[String],
    ) -> TriggerSettings {
        let retention = raw
            .retention
            .as_ref()
            .and_then(|r| self.duration(r, "triggers.retention"))
            .unwrap_or(DEFAULT_RETENTION);
        let mut recorded = vec![false; segments.len()];
        for name in raw.stream.iter().flat_map(|list| list.get_ref()) {
            if name.get_ref() == "*" {
                recorded.iter_mut().for_each(|r| *r = true);
                continue;
            }
            match segments.iter().position(|s| s == name.get_ref()) {
                Some(at) if recorded[at] => self.error(
                    name.span(),
                    format!(
                        "segment `{}` is listed twice in triggers.stream",
                        name.get_ref()
                    ),
                    None,
                ),
                Some(at) => recorded[at] = true,
                None => self.error(
                    name.span(),
                    format!(
                        "triggers.stream names `{}`, which is not a segment",
                        name.get_ref()
                    ),
                    Some(format!(
                        "the segments are: {}; `*` records them all",
                        segments.join(", ")
                    )),
                ),
            }
        }
        TriggerSettings {
            recorded,
            retention,
        }
    }
}
