//! Live reload: a new config swapped in while ingest and decisions go on.
//!
//! The running engine is not changed in place: its layout, its dependency index, its
//! compiled rules are all the config's. Instead a second engine is built under the new
//! config from what the running one knows, and the two are swapped:
//!
//! 1. [`prepare`] takes a snapshot image of the running engine (copy on write: ingest
//!    goes on), loads it into a new engine, moving profiles into the new layout and
//!    evaluating every segment for every customer (see `engine::relayout`), then
//!    replays the log written meanwhile into the new engine, up to what is stored.
//! 2. [`Prepared::finish`], called while the server holds requests back, replays the
//!    last records (those logged since step 1 ended), hands the log over to the new
//!    engine and returns it. The pause lasts only this last catch-up.
//!
//! So the new engine holds exactly what the old one did, as if its events had been
//! applied under the new config, except aggregates that only the new config keeps: they
//! start from the reload, and the report names them and the rules that read them.
//!
//! Only one snapshot or reload runs at a time ([`snapshot::exclusive`]): a snapshot
//! removes log files that a reload is reading.

use std::sync::Arc;
use std::time::Instant;

use super::{scan_log, segments, snapshot, DataDir, StoreError, TornTail};
use crate::config::Config;
use crate::engine::RestoreError;
pub use crate::model::reload::ReloadReport;
use crate::node::Node;

/// Why a reload did not happen. The running config stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records left for the pause: about 10 ms of replay.
const FEW: u64 = 10_000;

/// A new engine built and caught up with the log, waiting for [`Prepared::finish`].
pub struct Prepared {
    node: Arc<Node>,
    cuts: Vec<u64>,
    counted_to: u64,
    /// The last log record the new engine has seen.
    replayed_to: u64,
    report: ReloadReport,
    started: Instant,
    _exclusive: parking_lot::MutexGuard<'static, ()>,
}

/// What changed between two configs, for the report.
fn compare(old: &Config, new: &Config, report: &mut ReloadReport) {
    for s in &new.segments {
        match old.segments.iter().find(|o| o.name == s.name) {
            None => report.segments_added.push(s.name.clone()),
            Some(o) if o.rule != s.rule => report.segments_changed.push(s.name.clone()),
            Some(_) => {}
        }
    }
    for o in &old.segments {
        if !new.segments.iter().any(|s| s.name == o.name) {
            report.segments_removed.push(o.name.clone());
        }
    }
    let offer_names =
        |c: &Config| -> Vec<String> { c.decisions.offers.iter().map(|o| o.name.clone()).collect() };
    let (before, after) = (offer_names(old), offer_names(new));
    report.offers_added = after
        .iter()
        .filter(|o| !before.contains(o))
        .cloned()
        .collect();
    report.offers_removed = before
        .iter()
        .filter(|o| !after.contains(o))
        .cloned()
        .collect();
    // The same test as the offer state's remap (`decide::state::OfferRemap`): an
    // experiment carries over by name only with the same arms, in the same order.
    let arms = |c: &Config, i: usize| -> Vec<String> {
        c.decisions.experiments[i]
            .arms
            .iter()
            .map(|a| a.name.clone())
            .collect()
    };
    for (i, e) in new.decisions.experiments.iter().enumerate() {
        if let Some(j) = old
            .decisions
            .experiments
            .iter()
            .position(|o| o.name == e.name)
        {
            if arms(old, j) != arms(new, i) {
                report.experiments_reset.push(e.name.clone());
            }
        }
    }
    for (i, feature) in new.features.iter().enumerate() {
        if old.features.iter().any(|f| f.label() == feature.label()) {
            continue;
        }
        let mut readers: Vec<String> = new
            .segments
            .iter()
            .filter(|s| s.refs.features.contains(&i))
            .map(|s| format!("segment {}", s.name))
            .collect();
        readers.extend(new.scores.iter().filter_map(|s| match &s.model {
            crate::config::ScoreModel::Logistic { refs, .. } if refs.features.contains(&i) => {
                Some(format!("score {}", s.name))
            }
            _ => None,
        }));
        report
            .new_aggregates
            .push((feature.label().to_string(), readers));
    }
}

/// Builds an engine under `config` from `current` and the log (step 1 above).
/// `progress` gets the percentage of customers moved so far.
pub fn prepare(
    data: &DataDir,
    current: &Node,
    config: Config,
    progress: &dyn Fn(u8),
) -> Result<Prepared, ReloadError> {
    let started = Instant::now();
    let exclusive = snapshot::exclusive();
    if config.engine.shards != current.config().engine.shards {
        return Err(ReloadError::Refused(format!(
            "engine.shards is {} in the new config and {} in the running one: the shard count cannot change while a data directory lives",
            config.engine.shards,
            current.config().engine.shards
        )));
    }
    let mut report = ReloadReport {
        config_version: config.version,
        ..ReloadReport::default()
    };
    compare(current.config(), &config, &mut report);
    let image = current.image();
    let same =
        snapshot::layout_fingerprint(&config) == snapshot::layout_fingerprint(current.config());
    let next = Arc::new(Node::new(config, current.engine().clock()));
    // The same data directory, the same key for the suppression list.
    next.engine()
        .suppression()
        .set_secret(current.engine().suppression().secret());
    let cuts = next
        .restore_with(
            &image,
            (!same).then(|| current.engine().plan()),
            &|done, total| {
                let percent = (done * 100 / total.max(1)) as u8;
                tracing::info!("reloading the config: {percent}% of customers moved");
                progress(percent);
            },
        )
        .map_err(|e| match e {
            RestoreError::Layout(reason) => ReloadError::Refused(reason),
            // The image was made a moment ago by this process: a failure is a bug.
            RestoreError::Shard { shard, error } => ReloadError::Refused(format!(
                "the running engine's shard {shard} could not be read back: {error}"
            )),
        })?;
    report.customers = next.engine().stats().customers;
    let mut prepared = Prepared {
        node: next,
        counted_to: image.engine.position,
        replayed_to: cuts.iter().copied().min().unwrap_or(0),
        cuts,
        report,
        started,
        _exclusive: exclusive,
    };
    if let Some(journal) = current.engine().journal() {
        // Replay is faster than ingest, so each pass leaves less behind; the pause in
        // `finish` then replays only the last few.
        for _ in 0..16 {
            let stored = journal.durable_now();
            if stored.saturating_sub(prepared.replayed_to) <= FEW {
                break;
            }
            prepared.catch_up(data, stored)?;
        }
    }
    Ok(prepared)
}

impl Prepared {
    /// Replays the log records after the last one replayed, up to `upto`, which must
    /// be stored (so whole in the files).
    fn catch_up(&mut self, data: &DataDir, upto: u64) -> Result<(), StoreError> {
        let wal = data.wal();
        let files = segments(&wal)?;
        // Files wholly before what is left to replay are not read again.
        let from = self.replayed_to + 1;
        let skip = files
            .windows(2)
            .take_while(|pair| pair[1].0 <= from)
            .count();
        let (node, cuts, counted_to) = (&self.node, &self.cuts, self.counted_to);
        let (mut replayed_to, mut replayed) = (self.replayed_to, 0);
        scan_log(&files[skip..], from, upto, TornTail::Refuse, |record| {
            record.replay(node, cuts, counted_to)?;
            replayed_to = record.sequence;
            replayed += 1;
            Ok(())
        })?;
        self.replayed_to = replayed_to;
        self.report.replayed += replayed;
        Ok(())
    }

    /// Step 2: replays what was logged since [`prepare`] and hands the log over. Call it
    /// while no request can change `current` (the server holds them back), and swap
    /// the returned engine in before letting them go.
    pub fn finish(
        mut self,
        data: &DataDir,
        current: &Node,
    ) -> Result<(Arc<Node>, ReloadReport), ReloadError> {
        let paused = Instant::now();
        if let Some(journal) = current.engine().journal() {
            let last = journal.last_appended();
            journal.wait_durable(last).map_err(ReloadError::Refused)?;
            self.catch_up(data, last)?;
            self.node.engine().attach_journal(journal.clone());
            // Before the new engine takes a request: the flips the new rules made.
            let recorded = self.node.engine().reconcile_stream();
            if recorded > 0 {
                tracing::info!(
                    changes = recorded,
                    "the change stream records what the reload changed in its segments"
                );
            }
        }
        // No request reaches `current` any more: what it knows beyond the log (the
        // decisions FEEDBACK can name, the decision counters) is final; carry it over.
        self.node.adopt(current);
        current.engine().retire();
        self.report.paused = paused.elapsed();
        self.report.took = self.started.elapsed();
        Ok((self.node, self.report))
    }
}
