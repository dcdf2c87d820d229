//! A property of the change stream: for random event streams, merges, forgets and
//! clock advances, the changes a subscriber is given, applied in order to one empty set
//! per segment, equal each segment's members after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use omnia::clock::{Clock, ManualClock};
use omnia::config::{Config, Source};
use omnia::engine::{RawEvent, Receipt};
use omnia::model::ChangeKind;
use omnia::store::Store;
use proptest::prelude::*;

mod common;
use common::{unsynced_wal, TempDir, START_MS};

/// What a step does.
#[derive(Debug, Clone)]
enum Step {
    Cart {
        who: u8,
        channel: u8,
    },
    Purchase {
        who: u8,
        amount: u16,
    },
    /// The cookie `anon:a` logs in as `user:u`: one profile, merged if both exist.
    Login {
        anon: u8,
        user: u8,
    },
    Forget {
        who: u8,
    },
    /// Minutes pass.
    Wait {
        minutes: u16,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..6, 0u8..3).prop_map(|(who, channel)| Step::Cart { who, channel }),
        2 => (0u8..6, 1u16..400).prop_map(|(who, amount)| Step::Purchase { who, amount }),
        2 => (0u8..6, 0u8..4).prop_map(|(anon, user)| Step::Login { anon, user }),
        1 => (0u8..6).prop_map(|who| Step::Forget { who }),
        3 => prop_oneof![1u16..20, 25u16..40, 60u16..3000].prop_map(|minutes| Step::Wait { minutes }),
    ]
}

fn config() -> Config {
    let text = format!(
        "{}\n[triggers]\nstream = [\"*\"]\n",
        omnia::config::DEFAULT_CONFIG
    );
    Config::from_source(&Source::new("stream_model.toml", text)).unwrap_or_else(|e| panic!("{e}"))
}

const CHANNELS: [&str; 3] = ["web", "app", "email"];

fn apply(store: &Store, clock: &ManualClock, step: &Step) {
    let node = &store.node;
    let now = clock.now_ms();
    let event = match step {
        Step::Cart { who, channel } => {
            RawEvent::new("add_to_cart", CHANNELS[*channel as usize], now)
                .key(&format!("anon:{who}"))
        }
        Step::Purchase { who, amount } => RawEvent::new("purchase", "app", now)
            .key(&format!("anon:{who}"))
            .prop("amount", *amount as f64),
        Step::Login { anon, user } => RawEvent::new("page_view", "app", now)
            .key(&format!("anon:{anon}"))
            .key(&format!("user:{user}"))
            .attr("email_opt_in", true),
        Step::Forget { who } => {
            // An unknown key is not an error worth stopping for here.
            let _ = node.forget_with(&format!("anon:{who}"), &mut Receipt::default());
            return;
        }
        Step::Wait { minutes } => {
            clock.advance_secs(*minutes as i64 * 60);
            node.tick();
            return;
        }
    };
    // A suppressed (forgotten) key is refused: that is part of the stream under test.
    let _ = node.ingest(&event);
}

/// Every segment's members now, by name.
fn members(store: &Store) -> BTreeMap<String, BTreeSet<u32>> {
    let engine = store.node.engine();
    engine
        .config()
        .segments
        .iter()
        .map(|s| {
            let query = engine.query(&s.name).unwrap();
            let ids = engine
                .members(&query, 0, 10_000)
                .members
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            (s.name.clone(), ids)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_changes_replayed_are_the_members_at_every_step(steps in prop::collection::vec(step(), 1..40)) {
        let dir = TempDir::new("stream-model", "case");
        let clock = Arc::new(ManualClock::new(START_MS));
        let store = Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
        let mut reader = store.stream.reader(1).unwrap();
        let mut sets: BTreeMap<String, BTreeSet<u32>> = store
            .node
            .config()
            .segments
            .iter()
            .map(|s| (s.name.clone(), BTreeSet::new()))
            .collect();
        let journal = store.node.engine().journal().unwrap().clone();
        for (i, step) in steps.iter().enumerate() {
            apply(&store, &clock, step);
            // Everything logged is in the stream's files before they are read.
            journal.wait_durable(journal.last_appended()).unwrap();
            store.stream.sync().unwrap();
            loop {
                let batch = reader.read(512).unwrap();
                if batch.is_empty() {
                    break;
                }
                for (_, c) in batch {
                    let set = sets.get_mut(&c.segment).unwrap();
                    match c.kind {
                        ChangeKind::Enter => prop_assert!(set.insert(c.customer), "step {i} {step:?}: {c:?} of a member"),
                        ChangeKind::Exit => prop_assert!(set.remove(&c.customer), "step {i} {step:?}: {c:?} of a non-member"),
                        ChangeKind::Reset => set.clear(),
                    }
                }
            }
            prop_assert_eq!(&sets, &members(&store), "after step {} {:?}", i, step);
        }
        store.close().unwrap();
    }
}
