//! The trigger runner: acts on the change stream as `[triggers.NAME]` says, and
//! delivers to webhooks, at least once, durably.
//!
//! One task, on a thread of its own, follows the stream from the journal's cursor (`store::deliveries`). For a
//! change a trigger is `on` it schedules a delivery, due `after` the change; for the
//! opposite change of the same customer it cancels that trigger's deliveries not yet
//! prepared (Sofia buys: her second reminder is not sent). Both are in the journal,
//! synced, before the cursor moves past the change. When a delivery is due the runner
//! looks at the customer now: gone (forgotten, merged away), no longer where the change
//! put it, or failing the trigger's rule, and the delivery is cancelled; in its quiet
//! hours, it is deferred to their end; else it decides the offers (`decide = true`),
//! waits for the impression's log record to be durable, fixes the document in the
//! journal (`Prepared`), and posts it. A post answered 2xx is delivered; any other
//! answer or none is retried after `backoff`, doubling up to an hour, until
//! `max_attempts`, when the delivery becomes a dead letter (STATS, `ctl stats
//! --triggers`). A 4xx other than 408 and 429 is a refusal of the document itself:
//! dead at once, as retrying would send the same document again.
//!
//! Invariants: one document per delivery id, the same on every attempt; the id
//! (`TRIGGER-POSITION`, see `store::deliveries`) is sent as the `Idempotency-Key`
//! header and in the document, so a receiver that keeps the ids it has seen acts
//! exactly once. Changes recovered after a crash that the log itself had lost
//! (`cause = recovery`) and stream resets are not acted on: they may be old, or every
//! member of a segment newly on the stream.
//!
//! Cost: the journal is synced once per batch of changes read that schedules or cancels
//! something (else once a second at most), once per batch of deliveries prepared, and
//! once per batch of posts finished; the decisions of a batch wait for the log once. An
//! open delivery holds about 150 bytes in memory, plus its document once prepared.
//!
//! Time is the engine's clock, so tests move it; the runner looks at it at least every
//! `POLL`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::config::triggers::{TriggerDef, MAX_BACKOFF};
use crate::config::Config;
use crate::engine::Receipt;
use crate::model::decision::DecisionRequest;
use crate::model::{Cause, Change, ChangeKind};
use crate::server::Shared;
use crate::store::deliveries::{DeadLetter, Deliveries, Delivery, DeliveryRecord, DeliveryState};
use crate::store::stream::{Reader, Stream, StreamError};
use crate::store::StoreError;

/// Changes read at a time.
const BATCH: usize = 512;
/// The longest the runner goes without looking at the clock.
const POLL: Duration = Duration::from_millis(100);
/// Posts in flight at once.
const IN_FLIGHT: usize = 32;
/// How often the cursor is journaled when no change needs anything: a change read again
/// after a crash is one that scheduled nothing, so this bounds work, not correctness.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// Counters of one trigger since the server started.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TriggerCounts {
    pub scheduled: u64,
    pub delivered: u64,
    /// Attempts that failed (and were retried, or ended dead).
    pub failed: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Open now: scheduled, not finished.
    pub pending: u64,
}

/// What the runner shows STATS and `/metrics`.
#[derive(Debug, Default)]
pub struct TriggerStatus {
    inner: parking_lot::Mutex<StatusInner>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct StatusInner {
    /// The stream position the runner has read every change up to.
    cursor: u64,
    triggers: BTreeMap<String, TriggerCounts>,
    /// The newest dead letters, oldest first.
    dead_letters: Vec<DeadLetter>,
}

impl TriggerStatus {
    /// The status as a JSON document: `cursor`, `triggers` (counts by name) and
    /// `dead_letters`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.inner.lock()).unwrap_or_default()
    }

    /// Counts by trigger.
    pub fn counts(&self) -> BTreeMap<String, TriggerCounts> {
        self.inner.lock().triggers.clone()
    }

    fn count(&self, trigger: &str, f: impl FnOnce(&mut TriggerCounts)) {
        f(self
            .inner
            .lock()
            .triggers
            .entry(trigger.to_string())
            .or_default());
    }
}

/// The running runner: [`TriggerRunner::stop`] ends it.
pub struct TriggerRunner {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl TriggerRunner {
    /// Opens the deliveries journal in `dir` and starts following `shared`'s change
    /// stream for its triggers; `None` for a server without a stream.
    pub fn spawn(
        shared: Arc<Shared>,
        dir: &std::path::Path,
    ) -> Result<Option<TriggerRunner>, StoreError> {
        let (Some(stream), Some(status)) = (shared.stream.clone(), shared.triggers.clone()) else {
            return Ok(None);
        };
        let (journal, state) = Deliveries::open(dir)?;
        // https webhooks use the ring provider, as the server's own TLS does.
        crate::tls::install_crypto_provider();
        let client = webhook_client(None).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut runner = Runner {
            shared,
            stream,
            journal,
            state: DeliveryState::default(),
            due: BinaryHeap::new(),
            by_customer: HashMap::new(),
            status,
            clients: HashMap::from([(None, client)]),
            posts: JoinSet::new(),
            posting: HashMap::new(),
            cursor_written: std::time::Instant::now(),
            prepared: Default::default(),
            erase: false,
        };
        runner.load(state);
        // A thread and a runtime of its own: the runner reads files, syncs its journal
        // and decides, which on the server's workers would hold up the connections
        // queued behind it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        let thread = std::thread::Builder::new()
            .name("omnia-triggers".into())
            .spawn(move || runtime.block_on(runner.run(stopped)))
            .map_err(|e| StoreError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        Ok(Some(TriggerRunner { stop, thread }))
    }

    /// Stops the runner and waits for it; posts in flight are abandoned (their
    /// deliveries stay open in the journal and are sent again at the next start).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// What an attempt came to.
struct Posted {
    id: String,
    attempt: u32,
    outcome: Result<u16, String>,
}

struct Runner {
    shared: Arc<Shared>,
    stream: Arc<Stream>,
    journal: Deliveries,
    state: DeliveryState,
    /// Open deliveries by due time; an entry whose due time no longer matches its
    /// delivery's is stale and skipped.
    due: BinaryHeap<Reverse<(i64, String)>>,
    /// Open deliveries by customer and slot generation, for cancellation.
    by_customer: HashMap<(u32, u32), Vec<String>>,
    status: Arc<TriggerStatus>,
    /// One client (and its pool of connections) per set of trusted CAs: `None` is the
    /// system's trust store.
    clients: HashMap<Option<Vec<u8>>, reqwest::Client>,
    posts: JoinSet<Posted>,
    /// Deliveries being posted: not due again until their post ends.
    posting: HashMap<String, ()>,
    /// When a `Cursor` was last journaled.
    cursor_written: std::time::Instant,
    /// Customers whose documents were journaled since the journal was last rewritten.
    prepared: std::collections::HashSet<(u32, u32)>,
    /// A forgotten customer's document is in the journal's file: rewrite it.
    erase: bool,
}

impl Runner {
    fn load(&mut self, state: DeliveryState) {
        for d in state.open.values() {
            self.index(d);
            if d.body.is_some() {
                self.prepared.insert((d.customer, d.generation));
            }
        }
        {
            let mut status = self.status.inner.lock();
            status.cursor = state.cursor;
            status.dead_letters = state.dead.iter().cloned().collect();
            for d in state.open.values() {
                status
                    .triggers
                    .entry(d.trigger.clone())
                    .or_default()
                    .pending += 1;
            }
        }
        self.state = state;
    }

    fn index(&mut self, d: &Delivery) {
        self.due.push(Reverse((d.due_ms, d.id.clone())));
        self.by_customer
            .entry((d.customer, d.generation))
            .or_default()
            .push(d.id.clone());
    }

    /// Applies and journals `records` (synced), and counts them.
    fn commit(&mut self, records: Vec<DeliveryRecord>) -> Result<(), StoreError> {
        self.journal.append(&records)?;
        for record in &records {
            if let DeliveryRecord::Delivered { id, .. }
            | DeliveryRecord::Cancelled { id, .. }
            | DeliveryRecord::Dead { id, .. } = record
            {
                if let Some(d) = self.state.open.get(id) {
                    let key = (d.customer, d.generation);
                    if let Some(ids) = self.by_customer.get_mut(&key) {
                        ids.retain(|other| other != id);
                        if ids.is_empty() {
                            self.by_customer.remove(&key);
                        }
                    }
                }
            }
            if let DeliveryRecord::Prepared { id, .. } = record {
                if let Some(d) = self.state.open.get(id) {
                    self.prepared.insert((d.customer, d.generation));
                }
            }
            self.state.apply(record);
            self.counted(record);
        }
        if self.erase || self.journal.wants_compaction() {
            self.journal.rewrite(&self.state)?;
            self.erase = false;
            self.prepared = self
                .state
                .open
                .values()
                .filter(|d| d.body.is_some())
                .map(|d| (d.customer, d.generation))
                .collect();
        }
        Ok(())
    }

    fn counted(&self, record: &DeliveryRecord) {
        let trigger = |id: &str| id.rsplit_once('-').map_or(id, |(t, _)| t).to_string();
        match record {
            DeliveryRecord::Cursor { .. } => {}
            DeliveryRecord::Scheduled { trigger, .. } => self.status.count(trigger, |c| {
                c.scheduled += 1;
                c.pending += 1;
            }),
            DeliveryRecord::Failed { id, .. } => {
                self.status.count(&trigger(id), |c| c.failed += 1);
                super::metrics::trigger_delivery(&trigger(id), "failed");
            }
            DeliveryRecord::Delivered { id, .. } => {
                self.status.count(&trigger(id), |c| {
                    c.delivered += 1;
                    c.pending = c.pending.saturating_sub(1);
                });
                super::metrics::trigger_delivery(&trigger(id), "delivered");
            }
            DeliveryRecord::Cancelled { id, .. } => {
                self.status.count(&trigger(id), |c| {
                    c.cancelled += 1;
                    c.pending = c.pending.saturating_sub(1);
                });
                super::metrics::trigger_delivery(&trigger(id), "cancelled");
            }
            DeliveryRecord::Dead { id, .. } => {
                let t = trigger(id);
                self.status.count(&t, |c| {
                    c.dead += 1;
                    c.failed += 1;
                    c.pending = c.pending.saturating_sub(1);
                });
                super::metrics::trigger_delivery(&t, "dead");
                let mut status = self.status.inner.lock();
                status.dead_letters = self.state.dead.iter().cloned().collect();
            }
            DeliveryRecord::Deferred { .. } | DeliveryRecord::Prepared { .. } => {}
        }
    }

    async fn run(&mut self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut archived = self.stream.watch();
        let mut reader: Option<Reader> = None;
        loop {
            if *stopped.borrow() {
                return;
            }
            // One config for the turn; a reload takes effect at the next.
            let node = self.shared.node();
            let config = node.config();
            if let Err(e) = self.follow(config, &mut reader) {
                warn!(error = %e, "the trigger runner cannot read the change stream or write its journal; it tries again");
                reader = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => return,
                }
                continue;
            }
            if let Err(e) = self.act_on_due(config).await {
                warn!(error = %e, "the trigger runner cannot write its journal; it tries again");
            }
            tokio::select! {
                _ = archived.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                Some(done) = self.posts.join_next(), if !self.posts.is_empty() => {
                    // Every post finished by now is journaled in one synced write.
                    let mut posted: Vec<Posted> = done.into_iter().collect();
                    while let Some(done) = self.posts.try_join_next() {
                        posted.extend(done);
                    }
                    if let Err(e) = self.finish(config, posted) {
                        warn!(error = %e, "the trigger runner cannot write its journal; the attempts are made again");
                    }
                }
                _ = stopped.changed() => return,
            }
        }
    }

    /// Schedules and cancels for the changes after the cursor.
    fn follow(&mut self, config: &Config, reader: &mut Option<Reader>) -> Result<(), String> {
        if config.triggers.triggers.is_empty() && self.state.open.is_empty() {
            // Nothing acts on the stream: stay at its end, so that a trigger added by
            // a reload starts from then, not from changes made before it existed.
            let end = self.stream.archived();
            self.status.inner.lock().cursor = end;
            if end > self.state.cursor && self.cursor_written.elapsed() >= CURSOR_EVERY {
                self.commit(vec![DeliveryRecord::Cursor { position: end }])
                    .map_err(|e| e.to_string())?;
                self.cursor_written = std::time::Instant::now();
            }
            *reader = None;
            return Ok(());
        }
        loop {
            let from = self.state.cursor + 1;
            let r = match reader {
                Some(r) => r,
                None => match self.stream.reader(from) {
                    Ok(r) => reader.insert(r),
                    Err(StreamError::BeyondRetention { earliest, .. }) => {
                        warn!(
                            from,
                            earliest,
                            "the trigger runner was behind the stream's retention: the changes before {earliest} are not acted on"
                        );
                        self.commit(vec![DeliveryRecord::Cursor {
                            position: earliest.saturating_sub(1),
                        }])
                        .map_err(|e| e.to_string())?;
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                },
            };
            let batch = r.read(BATCH).map_err(|e| e.to_string())?;
            let through = r.next_position().saturating_sub(1);
            self.status.inner.lock().cursor = through;
            let full = batch.len() == BATCH;
            let mut records = Vec::new();
            for (position, change) in &batch {
                self.on_change(config, *position, change, &mut records);
            }
            // A change that scheduled something is journaled with the cursor past it,
            // so that it is never read again after the delivery is finished.
            if through > self.state.cursor
                && (!records.is_empty() || self.cursor_written.elapsed() >= CURSOR_EVERY)
            {
                records.push(DeliveryRecord::Cursor { position: through });
                self.cursor_written = std::time::Instant::now();
            }
            self.commit(records).map_err(|e| e.to_string())?;
            if !full {
                return Ok(());
            }
        }
    }

    fn on_change(
        &mut self,
        config: &Config,
        position: u64,
        change: &Change,
        records: &mut Vec<DeliveryRecord>,
    ) {
        if change.kind == ChangeKind::Reset {
            return;
        }
        if change.cause == Cause::Forget {
            self.forgotten(change, records);
        }
        let entered = change.kind == ChangeKind::Enter;
        for t in config
            .triggers
            .triggers
            .iter()
            .filter(|t| t.segment_name == change.segment)
        {
            if t.on_enter == entered {
                if change.cause == Cause::Recovery {
                    continue;
                }
                let id = format!("{}-{position}", t.name);
                if self.state.open.contains_key(&id) {
                    continue;
                }
                let d = Delivery {
                    id: id.clone(),
                    trigger: t.name.clone(),
                    position,
                    customer: change.customer,
                    generation: change.generation,
                    time: change.time,
                    due_ms: (change.time as i64 + t.after as i64) * 1000,
                    body: None,
                    attempts: 0,
                    last_error: None,
                };
                self.index(&d);
                records.push(DeliveryRecord::Scheduled {
                    id,
                    trigger: d.trigger,
                    position,
                    customer: d.customer,
                    generation: d.generation,
                    time: d.time,
                    due_ms: d.due_ms,
                });
            } else {
                // The opposite change: what this trigger had planned for the customer
                // no longer applies, unless its document is fixed already.
                let why = format!(
                    "the customer {} `{}` first",
                    if entered { "entered" } else { "left" },
                    t.segment_name
                );
                self.cancel(change, records, &why, |trigger, prepared| {
                    trigger == t.name && !prepared
                });
            }
        }
    }

    /// A forgotten customer's deliveries are all cancelled, prepared or not, and a
    /// document naming it leaves the journal's file at once (see `commit`).
    fn forgotten(&mut self, change: &Change, records: &mut Vec<DeliveryRecord>) {
        if self.prepared.remove(&(change.customer, change.generation)) {
            self.erase = true;
        }
        self.cancel(change, records, "the customer was forgotten", |_, _| true);
    }

    /// Cancels the open deliveries of `change`'s customer that `which(trigger,
    /// prepared)` picks and that are not being posted: those journaled, and those that
    /// `records` (this batch, not journaled yet) schedules.
    fn cancel(
        &self,
        change: &Change,
        records: &mut Vec<DeliveryRecord>,
        why: &str,
        which: impl Fn(&str, bool) -> bool,
    ) {
        let Some(ids) = self.by_customer.get(&(change.customer, change.generation)) else {
            return;
        };
        for id in ids {
            if self.posting.contains_key(id) {
                continue;
            }
            let picked = match self.state.open.get(id) {
                Some(d) => which(&d.trigger, d.body.is_some()),
                None => records.iter().any(|r| {
                    matches!(r, DeliveryRecord::Scheduled { id: s, trigger, .. } if s == id && which(trigger, false))
                }),
            };
            let cancelled = records
                .iter()
                .any(|r| matches!(r, DeliveryRecord::Cancelled { id: c, .. } if c == id));
            if picked && !cancelled {
                records.push(DeliveryRecord::Cancelled {
                    id: id.clone(),
                    at_ms: change.time as i64 * 1000,
                    why: why.to_string(),
                });
            }
        }
    }

    /// Acts on every delivery due now (up to the posts allowed in flight): prepares
    /// those not prepared, waits once for the log to hold their decisions, journals
    /// what came of them in one synced write, then posts.
    async fn act_on_due(&mut self, config: &Config) -> Result<(), StoreError> {
        let now = self.shared.node().engine().now_ms();
        let mut records = Vec::new();
        let mut to_post: Vec<(TriggerDef, String, u32, String)> = Vec::new();
        // Popped from `due`: put back if what came of them cannot be journaled.
        let mut popped = Vec::new();
        let mut durable_to = None;
        while self.posts.len() + to_post.len() < IN_FLIGHT {
            let Some(Reverse((due, id))) = self.due.peek().cloned() else {
                break;
            };
            if due > now {
                break;
            }
            self.due.pop();
            let Some(d) = self.state.open.get(&id).cloned() else {
                continue;
            };
            if d.due_ms != due || self.posting.contains_key(&id) {
                continue;
            }
            popped.push((due, id.clone()));
            let Some(t) = config.triggers.trigger(&d.trigger).cloned() else {
                records.push(DeliveryRecord::Cancelled {
                    id,
                    at_ms: now,
                    why: format!("trigger `{}` is no longer in the config", d.trigger),
                });
                continue;
            };
            let body = match &d.body {
                Some(_) if !self.exists(&d) => {
                    records.push(DeliveryRecord::Cancelled {
                        id,
                        at_ms: now,
                        why: "the customer is gone (forgotten, or merged into another)".into(),
                    });
                    continue;
                }
                Some(body) => body.clone(),
                None => match self.prepare(&t, &d, now) {
                    Prepared::Body(body, logged) => {
                        durable_to = durable_to.max(logged);
                        records.push(DeliveryRecord::Prepared {
                            id: id.clone(),
                            body: body.clone(),
                        });
                        body
                    }
                    Prepared::Defer(due_ms) => {
                        self.due.push(Reverse((due_ms, id.clone())));
                        records.push(DeliveryRecord::Deferred { id, due_ms });
                        continue;
                    }
                    Prepared::Cancel(why) => {
                        records.push(DeliveryRecord::Cancelled {
                            id,
                            at_ms: now,
                            why,
                        });
                        continue;
                    }
                },
            };
            to_post.push((t, id, d.attempts + 1, body));
        }
        // The impressions are recorded before any channel hears of them.
        let node = self.shared.node();
        let logged = match (node.engine().journal(), durable_to) {
            (Some(journal), Some(last)) => {
                journal.durable(last).await.map_err(|e| StoreError::Io {
                    path: "the write-ahead log".into(),
                    source: std::io::Error::other(format!(
                        "a trigger's decision could not be made durable: {e}"
                    )),
                })
            }
            _ => Ok(()),
        };
        match logged.and_then(|()| self.commit(records)) {
            Ok(()) => {
                for (t, id, attempt, body) in to_post {
                    self.post(&t, id, attempt, body);
                }
                Ok(())
            }
            Err(e) => {
                // Tried again in a second; a decision made for nothing is made again.
                for (_, id) in popped {
                    self.due.push(Reverse((now + 1000, id)));
                }
                Err(e)
            }
        }
    }

    /// Whether the customer a delivery is for is still the one in its slot.
    fn exists(&self, d: &Delivery) -> bool {
        let node = self.shared.node();
        !node.engine().keys_of(d.customer, d.generation).is_empty()
    }

    fn prepare(&self, t: &TriggerDef, d: &Delivery, now: i64) -> Prepared {
        let node = self.shared.node();
        let engine = node.engine();
        let rule = t.rule.as_ref().map(|(_, expr)| expr);
        let Some(customer) = engine.customer_now(d.customer, d.generation, t.segment, rule) else {
            return Prepared::Cancel(
                "the customer is gone (forgotten, or merged into another)".into(),
            );
        };
        if customer.member != t.on_enter {
            return Prepared::Cancel(format!(
                "the customer is {} `{}` now",
                if customer.member {
                    "in"
                } else {
                    "no longer in"
                },
                t.segment_name
            ));
        }
        if !customer.holds {
            let rule = t.rule.as_ref().map_or("", |(text, _)| text.as_str());
            return Prepared::Cancel(format!("the rule `{rule}` does not hold now"));
        }
        let Some(key) = customer.keys.first().cloned() else {
            return Prepared::Cancel("the customer has no key".into());
        };
        if let Some(quiet) = &t.quiet_hours {
            let zone = quiet
                .time_zone_attribute
                .as_ref()
                .and_then(|attr| {
                    let profile = engine.profile(&key)?;
                    let value = profile.attributes.iter().find(|(n, _)| n == attr)?;
                    match &value.1 {
                        crate::model::event::RawValue::Str(name) => {
                            jiff::tz::TimeZone::get(name).ok()
                        }
                        _ => None,
                    }
                })
                .unwrap_or_else(|| quiet.default_time_zone.clone());
            if let Some(end) = quiet_end(quiet, &zone, now) {
                return Prepared::Defer(end);
            }
        }
        let mut logged = None;
        let decision = if t.decide {
            let request = DecisionRequest {
                key: key.clone(),
                channel: t.channel_name.clone(),
                top: 1,
                record_impression: true,
                explain: false,
                context: Vec::new(),
            };
            let mut receipt = Receipt::default();
            let decided = {
                let Some(_fence) = self.shared.hold_requests() else {
                    // A reload is swapping engines: try again shortly.
                    return Prepared::Defer(now + 100);
                };
                node.decide_with(&request, &mut receipt)
            };
            match decided {
                Ok(decision) => {
                    logged = receipt.last();
                    let mut value = serde_json::to_value(&decision).unwrap_or_default();
                    value["decision_id"] = serde_json::json!(decision.decision_id.to_string());
                    value
                }
                Err(e) => return Prepared::Cancel(format!("the decision failed: {e}")),
            }
        } else {
            serde_json::Value::Null
        };
        let namespaced: serde_json::Map<String, serde_json::Value> = customer
            .keys
            .iter()
            .filter_map(|k| k.split_once(':'))
            .fold(serde_json::Map::new(), |mut map, (ns, value)| {
                if let serde_json::Value::Array(list) =
                    map.entry(ns).or_insert_with(|| serde_json::json!([]))
                {
                    list.push(value.into());
                }
                map
            });
        let document = serde_json::json!({
            "delivery_id": d.id,
            "trigger": t.name,
            "channel": t.channel_name,
            "segment": t.segment_name,
            "change": if t.on_enter { "enter" } else { "exit" },
            "position": d.position,
            "changed_at": d.time as i64 * 1000,
            "prepared_at": now,
            "customer": { "key": key, "keys": customer.keys, "by_namespace": namespaced },
            "decision": decision,
        });
        Prepared::Body(document.to_string(), logged)
    }

    fn post(&mut self, t: &TriggerDef, id: String, attempt: u32, body: String) {
        self.posting.insert(id.clone(), ());
        let client = match self.clients.get(&t.webhook.ca) {
            Some(client) => client.clone(),
            None => match webhook_client(t.webhook.ca.as_deref()) {
                Ok(client) => {
                    self.clients.insert(t.webhook.ca.clone(), client.clone());
                    client
                }
                Err(e) => {
                    self.posts.spawn(async move {
                        Posted {
                            id,
                            attempt,
                            outcome: Err(e),
                        }
                    });
                    return;
                }
            },
        };
        let mut request = client
            .post(&t.webhook.url)
            .timeout(Duration::from_secs(t.webhook.timeout as u64))
            .header("content-type", "application/json")
            .header("idempotency-key", &id)
            .header("omnia-trigger", &t.name)
            .header("omnia-attempt", attempt.to_string());
        for (name, value) in &t.webhook.headers {
            request = request.header(name, value);
        }
        let request = request.body(body);
        debug!(%id, attempt, url = %t.webhook.url, "posting a trigger delivery");
        self.posts.spawn(async move {
            let outcome = match request.send().await {
                Ok(response) => Ok(response.status().as_u16()),
                Err(e) => Err(describe(&e)),
            };
            Posted {
                id,
                attempt,
                outcome,
            }
        });
    }

    /// Journals what posts came to.
    fn finish(&mut self, config: &Config, posted: Vec<Posted>) -> Result<(), StoreError> {
        let now = self.shared.node().engine().now_ms();
        let mut records = Vec::with_capacity(posted.len());
        let mut ids = Vec::with_capacity(posted.len());
        for p in posted {
            self.posting.remove(&p.id);
            if let Some(d) = self.state.open.get(&p.id).cloned() {
                ids.push(p.id.clone());
                records.push(self.outcome(config, &d, p, now));
            }
        }
        let committed = self.commit(records);
        if committed.is_err() {
            // Posted again in a second: at least once.
            for id in ids {
                self.due.push(Reverse((now + 1000, id)));
            }
        }
        committed
    }

    /// What a post of `d` came to, as the record to journal.
    fn outcome(
        &mut self,
        config: &Config,
        d: &Delivery,
        posted: Posted,
        now: i64,
    ) -> DeliveryRecord {
        let t = config.triggers.trigger(&d.trigger);
        let max_attempts = t.map_or(1, |t| t.max_attempts);
        let backoff = t.map_or(MAX_BACKOFF, |t| t.backoff);
        let (error, refused) = match posted.outcome {
            Ok(status) if (200..300).contains(&status) => {
                super::metrics::trigger_latency(
                    &d.trigger,
                    (now - d.time as i64 * 1000).max(0) as f64 / 1000.0,
                );
                debug!(id = %posted.id, attempt = posted.attempt, status, "a trigger delivery was delivered");
                return DeliveryRecord::Delivered {
                    id: posted.id,
                    attempt: posted.attempt,
                    at_ms: now,
                    status,
                };
            }
            Ok(status) => (
                format!("the webhook answered HTTP {status}"),
                (400..500).contains(&status) && status != 408 && status != 429,
            ),
            Err(e) => (e, false),
        };
        if refused || posted.attempt >= max_attempts {
            warn!(id = %posted.id, attempts = posted.attempt, %error, "a trigger delivery is given up: it is a dead letter");
            return DeliveryRecord::Dead {
                id: posted.id,
                attempt: posted.attempt,
                at_ms: now,
                error: if refused {
                    format!("{error}, a refusal of the document: not retried")
                } else {
                    error
                },
            };
        }
        let wait = (backoff as i64)
            .saturating_mul(1 << (posted.attempt - 1).min(20))
            .min(MAX_BACKOFF as i64);
        let retry_ms = now + wait * 1000;
        debug!(id = %posted.id, attempt = posted.attempt, %error, retry_ms, "a trigger delivery failed; it is retried");
        self.due.push(Reverse((retry_ms, posted.id.clone())));
        DeliveryRecord::Failed {
            id: posted.id,
            attempt: posted.attempt,
            at_ms: now,
            error,
            retry_ms,
        }
    }
}

enum Prepared {
    /// The document, and the log record its decision's impression must wait for.
    Body(String, Option<u64>),
    /// Not now: due again at this time.
    Defer(i64),
    Cancel(String),
}

/// A client for webhooks whose certificates chain to the CAs in `ca` (PEM), or to the
/// system's trust store. Redirects are not followed: a delivery goes where the config
/// says.
fn webhook_client(ca: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("the webhook's `ca` cannot be used: {e}"))?;
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the webhook client: {e}"))
}

/// A webhook failure in words, with what caused it.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "the webhook did not answer in time"
    } else if e.is_connect() {
        "the webhook could not be reached"
    } else {
        "the webhook post failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {cause}")
    }
}

/// If `now` (ms) is in `quiet`'s hours in `zone`, the end of them (ms).
fn quiet_end(
    quiet: &crate::config::triggers::QuietHours,
    zone: &jiff::tz::TimeZone,
    now: i64,
) -> Option<i64> {
    let local = jiff::Timestamp::from_millisecond(now)
        .ok()?
        .to_zoned(zone.clone());
    let minute = local.hour() as u16 * 60 + local.minute() as u16;
    if !quiet.contains(minute) {
        return None;
    }
    let end = local
        .with()
        .hour((quiet.end / 60) as i8)
        .minute((quiet.end % 60) as i8)
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .ok()?;
    let end = if end.timestamp().as_millisecond() <= now {
        end.tomorrow().ok()?
    } else {
        end
    };
    Some(end.timestamp().as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::triggers::QuietHours;

    fn quiet(start: u16, end: u16, zone: &str) -> QuietHours {
        QuietHours {
            start,
            end,
            time_zone_attribute: None,
            default_time_zone: jiff::tz::TimeZone::get(zone).unwrap(),
            default_time_zone_name: zone.into(),
        }
    }

    fn ms(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn quiet_hours_over_midnight_end_the_next_morning_in_the_customers_zone() {
        let q = quiet(21 * 60, 8 * 60, "Europe/Paris");
        let zone = q.default_time_zone.clone();
        // 22:30 in Paris (CET, UTC+1) on 2 March 2026: quiet until 08:00 the next day.
        assert_eq!(
            quiet_end(&q, &zone, ms("2026-03-02T21:30:00Z")),
            Some(ms("2026-03-03T07:00:00Z"))
        );
        // 03:00 in Paris: quiet until 08:00 the same day.
        assert_eq!(
            quiet_end(&q, &zone, ms("2026-03-03T02:00:00Z")),
            Some(ms("2026-03-03T07:00:00Z"))
        );
        // 08:00 sharp and noon: not quiet.
        assert_eq!(quiet_end(&q, &zone, ms("2026-03-03T07:00:00Z")), None);
        assert_eq!(quiet_end(&q, &zone, ms("2026-03-03T11:00:00Z")), None);
    }

    #[test]
    fn quiet_hours_within_a_day() {
        let q = quiet(12 * 60, 14 * 60 + 30, "UTC");
        let zone = q.default_time_zone.clone();
        assert_eq!(
            quiet_end(&q, &zone, ms("2026-03-03T13:00:00Z")),
            Some(ms("2026-03-03T14:30:00Z"))
        );
        assert_eq!(quiet_end(&q, &zone, ms("2026-03-03T11:59:00Z")), None);
    }
}
