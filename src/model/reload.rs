//! What a reload of the config changed: the RELOAD response, `omnia ctl reload`'s
//! output and the server's log line.

use std::time::Duration;

/// What a reload changed, for the operator.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReloadReport {
    pub config_version: u32,
    pub customers: u64,
    pub segments_added: Vec<String>,
    pub segments_changed: Vec<String>,
    pub segments_removed: Vec<String>,
    pub offers_added: Vec<String>,
    pub offers_removed: Vec<String>,
    /// Aggregates the old config did not keep: they count from the reload on. Each
    /// with the segments and scores that read them.
    pub new_aggregates: Vec<(String, Vec<String>)>,
    /// Experiments kept by name whose arms changed: their customers are assigned anew
    /// and their measurement starts over (exposures and goal tallies are dropped).
    pub experiments_reset: Vec<String>,
    /// Log records replayed into the new engine while it was built, and in the pause.
    pub replayed: u64,
    pub took: Duration,
    /// How long requests were held back for the swap.
    pub paused: Duration,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        writeln!(
            f,
            "config version {:08x} is live: {} customers re-evaluated in {:.2?} (requests held for {:.2?}, {} log records replayed)",
            self.config_version, self.customers, self.took, self.paused, self.replayed
        )?;
        writeln!(f, "segments added: {}", list(&self.segments_added))?;
        writeln!(f, "segments changed: {}", list(&self.segments_changed))?;
        writeln!(f, "segments removed: {}", list(&self.segments_removed))?;
        writeln!(f, "offers added: {}", list(&self.offers_added))?;
        write!(f, "offers removed: {}", list(&self.offers_removed))?;
        for (aggregate, readers) in &self.new_aggregates {
            write!(
                f,
                "\nwarning: `{aggregate}` was not kept before: it counts from now, so {} see only what happens from now on",
                if readers.is_empty() {
                    "rules that read it".to_string()
                } else {
                    readers.join(", ")
                }
            )?;
        }
        for experiment in &self.experiments_reset {
            write!(
                f,
                "\nwarning: experiment `{experiment}`'s arms changed: its customers are assigned again and its measurement starts over (the exposures and goal tallies so far are dropped)"
            )?;
        }
        Ok(())
    }
}
