//! Forgetting a customer (FORGET): the whole merged profile goes at once, every key, the
//! row (aggregates, attributes, scores), its segment memberships and its extension's
//! part (offer state and coupons), and its keys go onto the suppression list
//! (`suppression`), so events carrying them are refused from then on. Retention
//! (`[privacy] retention`) forgets customers not seen for that long the same way, one
//! shard per tick, without suppressing their keys.
//!
//! The record (journal kind `FORGET`, 5) holds no key in clear:
//!
//! ```text
//! u32  time        seconds: when the customer was forgotten
//! u8   flags       bit 0: suppress its keys (a FORGET asks for it; retention does not)
//! u16  shard       the shard it lived in
//! u32  customer    its id then
//! u16  n           its keys
//! [u8; 16] × n     each key's keyed hash (`suppression`)
//! ```
//!
//! Replay finds the customer by its id and checks the id still holds one of the hashed
//! keys; customer ids are not always the same in a replay as they were live (a merge
//! frees a slot before its record is appended), so when they differ it looks the keys
//! up by hash over the whole identity map, which only a log holding forgets ever pays.
//!
//! Invariants: the record is appended under the customer's shard lock and the identity
//! mutex, before anything is removed (as for events), so a snapshot holds either the
//! customer or its forgetting; the keys leave the identity map and enter the suppression
//! list under the identity mutex (see `suppression`).

use super::suppression::Hashed;
use super::{journal, CustomerId, CustomerRef, Engine, Extension, Receipt};

/// What FORGET did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// The customer's id (now free for a new customer).
    pub customer: CustomerId,
    /// The keys it was known by, for the layers above to forget too (decisions they
    /// remember by key); not to be logged or kept.
    pub keys: Vec<String>,
    /// The log sequence of the FORGET record (0 without a log): the erasure's id.
    pub sequence: u64,
}

/// Why FORGET did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    #[error("no customer has the key `{key}`: nothing to forget (check the key, or it was forgotten already)")]
    Unknown { key: String },
    #[error("the write-ahead log cannot store changes now: {reason}; nothing was forgotten")]
    StorageFailed { reason: String },
}

/// A FORGET record, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetRecord {
    pub time: u32,
    /// Whether its keys go onto the suppression list (a FORGET), or not (retention: the
    /// person may come back as a new customer).
    pub suppress: bool,
    pub shard: u16,
    pub customer: CustomerId,
    pub keys: Vec<Hashed>,
}

impl ForgetRecord {
    pub fn encode(&self, body: &mut Vec<u8>) {
        use bytes::BufMut;
        body.put_u32_le(self.time);
        body.put_u8(self.suppress as u8);
        body.put_u16_le(self.shard);
        body.put_u32_le(self.customer);
        body.put_u16_le(self.keys.len() as u16);
        for k in &self.keys {
            body.put_slice(k);
        }
    }

    pub fn decode(body: &[u8]) -> Result<ForgetRecord, String> {
        let mut r = crate::codec::Reader::new(body);
        let field = crate::codec::named;
        let err = |e: crate::codec::DecodeError| format!("FORGET record: {e}");
        let time = r.u32(&field("time")).map_err(err)?;
        let suppress = r.u8(&field("flags")).map_err(err)? & 1 == 1;
        let shard = r.u16(&field("shard")).map_err(err)?;
        let customer = r.u32(&field("customer")).map_err(err)?;
        let n = r.u16(&field("key count")).map_err(err)?;
        let mut keys = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let mut k = [0u8; 16];
            for b in &mut k {
                *b = r.u8(&field("key hash")).map_err(err)?;
            }
            keys.push(k);
        }
        r.finish().map_err(err)?;
        Ok(ForgetRecord {
            time,
            suppress,
            shard,
            customer,
            keys,
        })
    }
}

impl<X: Extension> Engine<X> {
    /// The sequence of the last FORGET record replayed (0: none): an erasure from disk
    /// may still be owed for it, since the one requested before a crash was not kept.
    pub fn last_forget_replayed(&self) -> u64 {
        self.last_forget_replayed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The keys of forgotten customers (see `suppression`).
    pub fn suppression(&self) -> &super::suppression::Suppression {
        &self.suppression
    }

    /// Forgets the customer `key` belongs to, logging it first; notes the record in
    /// `receipt`. Its keys are suppressed from then on (unless `privacy.suppress` is
    /// off).
    pub fn forget_with(&self, key: &str, receipt: &mut Receipt) -> Result<Forgotten, ForgetError> {
        let suppress = self.plan.config.privacy.suppress;
        self.forget_customer(key, receipt, suppress, None)
    }

    /// Forgets customers not seen for `privacy.retention`, one shard per call (the
    /// engine's tick calls it, so a full pass takes one tick per shard). Their keys are
    /// not suppressed: a person who comes back is a new customer. Returns the keys of
    /// each customer forgotten, for the layers above.
    pub fn expire_unseen(&self) -> Vec<Vec<String>> {
        let retention = self.plan.config.privacy.retention;
        if retention == 0 {
            return Vec::new();
        }
        let now = self.now_secs();
        let Some(cutoff) = now.checked_sub(retention) else {
            return Vec::new();
        };
        let shard = self
            .retention_cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.shards.len();
        let unseen: Vec<String> = {
            let state = self.lock_at(shard, now);
            let base = state.id_base();
            state
                .live()
                .iter()
                .filter_map(|id| {
                    let local = id - base;
                    let row = state.row(&self.plan, local);
                    (row[super::profile::LAST_SEEN] < cutoff)
                        .then(|| state.keys(local).first().map(|k| k.text.to_string()))
                        .flatten()
                })
                .collect()
        };
        let mut expired = Vec::new();
        for key in unseen {
            // Checked again under the locks: an event may have come since.
            if let Ok(forgotten) =
                self.forget_customer(&key, &mut Receipt::default(), false, Some(cutoff))
            {
                expired.push(forgotten.keys);
            }
        }
        if !expired.is_empty() {
            self.expired
                .fetch_add(expired.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                customers = expired.len(),
                shard,
                "retention: forgot customers not seen within privacy.retention"
            );
        }
        expired
    }

    /// Customers forgotten by retention since the engine started.
    pub fn expired(&self) -> u64 {
        self.expired.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn forget_customer(
        &self,
        key: &str,
        receipt: &mut Receipt,
        suppress: bool,
        unseen_before: Option<u32>,
    ) -> Result<Forgotten, ForgetError> {
        let _strings = self.hold_strings();
        self.writable().map_err(|e| ForgetError::StorageFailed {
            reason: e.to_string(),
        })?;
        let _identity = self.identity_writes.lock();
        let unknown = || ForgetError::Unknown {
            key: key.to_string(),
        };
        let r = self
            .identity
            .get(key)
            .map(|r| CustomerRef::unpack(*r))
            .ok_or_else(unknown)?;
        let (shard, local) = self.split(r.id);
        let now = self.now_secs();
        let mut state = self.lock_at(shard, now);
        if !state.holds(local, r.generation) {
            return Err(unknown());
        }
        if unseen_before
            .is_some_and(|cutoff| state.row(&self.plan, local)[super::profile::LAST_SEEN] >= cutoff)
        {
            return Err(unknown());
        }
        let hashed: Vec<Hashed> = state
            .keys(local)
            .iter()
            .map(|k| self.suppression.hash(&k.text))
            .collect();
        let record = ForgetRecord {
            time: now,
            suppress,
            shard: shard as u16,
            customer: r.id,
            keys: hashed.clone(),
        };
        let mut sequence = 0;
        if let Some(journal) = self.journal.get() {
            sequence = journal.append(journal::kind::FORGET, &mut |body| record.encode(body));
            receipt.logged(sequence);
        }
        let keys = state.forget(&self.plan, local);
        drop(state);
        for k in &keys {
            self.identity.remove(&k.text);
        }
        if suppress {
            self.suppression.add(&hashed);
        }
        self.forgotten
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Forgotten {
            customer: r.id,
            keys: keys.into_iter().map(|k| k.text.to_string()).collect(),
            sequence,
        })
    }

    /// Replays a FORGET record read back from the log at `sequence`, unless the
    /// snapshot's image of its shard holds it already. Its keys go onto the suppression
    /// list either way. Returns the customer forgotten, if the replay removed one.
    pub fn replay_forget(
        &self,
        record: &ForgetRecord,
        sequence: u64,
        cuts: &[u64],
    ) -> Option<CustomerId> {
        if record.suppress {
            self.suppression.add(&record.keys);
        }
        self.last_forget_replayed
            .fetch_max(sequence, std::sync::atomic::Ordering::Relaxed);
        let shard = record.shard as usize;
        if cuts.get(shard).is_some_and(|&cut| sequence <= cut) {
            return None;
        }
        let _identity = self.identity_writes.lock();
        let wanted: std::collections::HashSet<&Hashed> = record.keys.iter().collect();
        let holds_a_key = |id: CustomerId| {
            let (shard, local) = self.split(id);
            let state = self.shards.get(shard)?.lock();
            let live = state.is_live(local)
                && state
                    .keys(local)
                    .iter()
                    .any(|k| wanted.contains(&self.suppression.hash(&k.text)));
            live.then_some(id)
        };
        // The id it had live, if replay gave it the same one; else a key by its hash.
        let found = holds_a_key(record.customer).or_else(|| {
            self.identity.iter().find_map(|entry| {
                wanted
                    .contains(&self.suppression.hash(entry.key()))
                    .then(|| CustomerRef::unpack(*entry.value()).id)
            })
        })?;
        let (shard, local) = self.split(found);
        let mut state = self.lock_at(shard, record.time);
        if !state.is_live(local) {
            return None;
        }
        let keys = state.forget(&self.plan, local);
        drop(state);
        for k in &keys {
            self.identity.remove(&k.text);
        }
        self.forgotten
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::config::Config;
    use crate::engine::EventError;
    use crate::model::RawEvent;
    use std::sync::Arc;

    const NOW: i64 = 1_772_445_600_000;

    fn engine() -> Engine {
        Engine::new(
            Config::embedded_default().unwrap(),
            Arc::new(ManualClock::new(NOW)),
        )
    }

    /// The default config with a `[privacy]` section of `settings`.
    fn privacy(settings: &str) -> Result<Config, String> {
        let text = format!("{}\n[privacy]\n{settings}\n", crate::config::DEFAULT_CONFIG);
        Config::from_source(&crate::config::Source::new("privacy.toml", text))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_forgotten_customer_is_gone_by_every_key_and_its_keys_are_refused() {
        let e = engine();
        e.ingest(&RawEvent::new("page_view", "web", NOW).key("anon:c-1"))
            .unwrap();
        e.ingest(
            &RawEvent::new("identify", "app", NOW)
                .key("anon:c-1")
                .key("user:sofia")
                .key("email:sofia@example.nl")
                .attr("country", "NL"),
        )
        .unwrap();
        e.ingest(
            &RawEvent::new("purchase", "store", NOW)
                .key("card:8812")
                .key("user:sofia")
                .prop("amount", 80.0),
        )
        .unwrap();
        e.ingest(&RawEvent::new("page_view", "web", NOW).key("anon:other"))
            .unwrap();
        let before = e.stats().customers;
        let forgotten = e.forget_with("card:8812", &mut Receipt::default()).unwrap();
        assert_eq!(forgotten.keys.len(), 4);
        assert_eq!(e.stats().customers, before - 1);
        for key in [
            "anon:c-1",
            "user:sofia",
            "email:sofia@example.nl",
            "card:8812",
        ] {
            assert_eq!(e.customer_of(key), None, "{key}");
            assert!(e.suppression().contains(key), "{key}");
        }
        assert!(e.customer_of("anon:other").is_some());
        // An event with one of her keys is refused, with or without other keys.
        let err = e
            .ingest(&RawEvent::new("page_view", "web", NOW).key("email:sofia@example.nl"))
            .unwrap_err();
        assert!(matches!(err, EventError::Suppressed { .. }), "{err}");
        let err = e
            .ingest(
                &RawEvent::new("page_view", "web", NOW)
                    .key("anon:other")
                    .key("user:sofia"),
            )
            .unwrap_err();
        assert!(matches!(err, EventError::Suppressed { .. }), "{err}");
        assert!(e.customer_of("user:sofia").is_none());
        // Forgetting again: nothing to forget.
        assert!(matches!(
            e.forget_with("user:sofia", &mut Receipt::default()),
            Err(ForgetError::Unknown { .. })
        ));
        // Strings the row held are let go, so nothing refers to what was forgotten.
        assert!(e.string_reference_errors().is_empty());
    }

    #[test]
    fn the_record_round_trips_and_replays_by_hash_when_ids_differ() {
        let record = ForgetRecord {
            time: 9,
            suppress: true,
            shard: 3,
            customer: 77,
            keys: vec![[1; 16], [2; 16]],
        };
        let mut body = Vec::new();
        record.encode(&mut body);
        assert_eq!(ForgetRecord::decode(&body).unwrap(), record);
        assert!(ForgetRecord::decode(&body[..body.len() - 1]).is_err());

        // Replayed into an engine where the customer got another id.
        let live = engine();
        live.ingest(
            &RawEvent::new("page_view", "web", NOW)
                .key("anon:x")
                .key("user:x"),
        )
        .unwrap();
        let hashed = vec![live.suppression().hash("user:x")];
        let replay = engine();
        replay.suppression().set_secret([0; 32]);
        live.suppression().set_secret([0; 32]);
        let hashed_again = vec![live.suppression().hash("user:x")];
        assert_ne!(hashed, hashed_again, "the secret decides the hash");
        replay
            .ingest(&RawEvent::new("page_view", "web", NOW).key("anon:y"))
            .unwrap();
        replay
            .ingest(
                &RawEvent::new("page_view", "web", NOW)
                    .key("anon:x")
                    .key("user:x"),
            )
            .unwrap();
        let record = ForgetRecord {
            time: 1,
            suppress: true,
            shard: 0,
            customer: u32::MAX,
            keys: hashed_again,
        };
        let id = replay.customer_of("user:x").unwrap();
        assert_eq!(replay.replay_forget(&record, 5, &[]), Some(id));
        assert_eq!(replay.customer_of("anon:x"), None);
        assert!(replay.customer_of("anon:y").is_some());
        assert!(replay.suppression().contains("user:x"));
    }

    #[test]
    fn retention_forgets_the_unseen_without_suppressing_them() {
        let config = privacy("retention = \"30d\"").unwrap();
        assert_eq!(config.privacy.retention, 30 * 86_400);
        let clock = Arc::new(ManualClock::new(NOW));
        let e: Engine = Engine::new(config, clock.clone());
        e.ingest(
            &RawEvent::new("page_view", "web", NOW)
                .key("anon:old")
                .key("user:old"),
        )
        .unwrap();
        e.ingest(&RawEvent::new("page_view", "web", NOW).key("anon:kept"))
            .unwrap();
        clock.advance_ms(20 * 86_400_000);
        e.ingest(&RawEvent::new("page_view", "web", clock.now_ms()).key("anon:kept"))
            .unwrap();
        clock.advance_ms(11 * 86_400_000);
        let shards = e.config().engine.shards as usize;
        let expired: Vec<Vec<String>> = (0..shards).flat_map(|_| e.expire_unseen()).collect();
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!(e.expired(), 1);
        assert_eq!(e.customer_of("user:old"), None);
        assert!(e.customer_of("anon:kept").is_some());
        // Not suppressed: the person may come back, as a new customer.
        assert!(!e.suppression().contains("user:old"));
        e.ingest(&RawEvent::new("page_view", "web", clock.now_ms()).key("user:old"))
            .unwrap();
        assert!(e.customer_of("user:old").is_some());
        // A retention of nothing is refused with its place.
        let err = privacy("retention = \"soon\"").unwrap_err();
        assert!(err.contains("bad duration for privacy.retention"), "{err}");
        // The erasure deadline: an hour unless set, and never zero.
        assert_eq!(
            Config::embedded_default().unwrap().privacy.erase_within,
            3600
        );
        let err = privacy("erase_within = \"0s\"").unwrap_err();
        assert!(
            err.contains("bad duration for privacy.erase_within: `0s` must be longer than zero"),
            "{err}"
        );
    }

    #[test]
    fn without_suppression_a_forgotten_key_starts_a_new_customer() {
        let config = privacy("suppress = false").unwrap();
        let e: Engine = Engine::new(config, Arc::new(ManualClock::new(NOW)));
        e.ingest(&RawEvent::new("page_view", "web", NOW).key("user:a"))
            .unwrap();
        e.forget_with("user:a", &mut Receipt::default()).unwrap();
        assert!(!e.suppression().contains("user:a"));
        let applied = e
            .ingest(&RawEvent::new("page_view", "web", NOW).key("user:a"))
            .unwrap();
        assert!(applied.created);
        assert!(e.customer_of("user:a").is_some());
    }
}
