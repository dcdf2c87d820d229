//! A decision that records impressions, and a feedback, is one action: one log record
//! that changes the profile (the offer events rules read) and the offer state (caps,
//! coupons, budgets, counters) together. Whatever a crash keeps of the log, the two
//! halves agree for every customer after recovery.
//!
//! Agreement is checked from outside, as a channel sees it, with a config made so that
//! each half can be read exactly: every offer is capped at one impression, so an offer
//! is `capped` for a customer iff its offer state holds an impression, and the
//! customer is in segment `saw_OFFER` iff its profile holds an `offer_impression` of
//! it; likewise `already_accepted` and `took_OFFER` for acceptances, the open coupon of
//! offer `a`, and the offer counters against the segment sizes.
//!
//! Two ways to crash: [`a_crash_after_any_record_leaves_both_halves_agreeing`] cuts the
//! log after every record in turn (deterministic: format 2, which wrote an action as an
//! EVENT record and an OFFER_ACTION record, fails it at the cut between them), and
//! [`sigkill_during_decisions_and_feedback_leaves_both_halves_agreeing`] kills the real
//! server while clients decide and accept.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::{serve_binary, Process};
use common::{copy_dir, unsynced_wal, TempDir};
use omnia::clock::ManualClock;
use omnia::config::{Config, Source};
use omnia::engine::RawEvent;
use omnia::model::decision::{
    Decision, DecisionRequest, FeedbackKind, FeedbackTarget, OfferStats, Outcome,
};
use omnia::node::Node;
use omnia::store::Store;

const OFFERS: [&str; 4] = ["a", "b", "c", "d"];
/// Monday 2 March 2026, 10:00 UTC.
const START: i64 = 1_772_445_600_000;

const CONFIG: &str = r#"
channels = ["web", "app", "email"]

[engine]
shards = 4

[identity]
namespaces = ["user", "anon"]

[events.page_view]

[events.offer_impression]
properties = { offer = "string", decision = "string" }

[events.offer_accept]
properties = { offer = "string", decision = "string" }

[segments.saw_a]
rule = 'ever(offer_impression where offer == "a")'
[segments.saw_b]
rule = 'ever(offer_impression where offer == "b")'
[segments.saw_c]
rule = 'ever(offer_impression where offer == "c")'
[segments.saw_d]
rule = 'ever(offer_impression where offer == "d")'
[segments.took_a]
rule = 'ever(offer_accept where offer == "a")'
[segments.took_b]
rule = 'ever(offer_accept where offer == "b")'
[segments.took_c]
rule = 'ever(offer_accept where offer == "c")'
[segments.took_d]
rule = 'ever(offer_accept where offer == "d")'

[decisions]
sticky = "off"
feedback_events = { impression = "offer_impression", accept = "offer_accept" }

[offers.a]
value = 4
caps = [{ impressions = 1, per = "90d" }]
coupon = { prefix = "A", valid = "90d" }

[offers.b]
value = 3
caps = [{ impressions = 1, per = "90d" }]
budget = { impressions = 30 }

[offers.c]
value = 2
caps = [{ impressions = 1, per = "90d" }]

[offers.d]
value = 1
caps = [{ impressions = 1, per = "90d" }]
"#;

fn config() -> Config {
    Config::from_source(&Source::new("actions.toml", CONFIG)).unwrap_or_else(|e| panic!("{e}"))
}

fn request(key: &str, record: bool) -> DecisionRequest {
    DecisionRequest {
        key: key.into(),
        channel: "web".into(),
        top: 2,
        record_impression: record,
        explain: !record,
        context: Vec::new(),
    }
}

/// What a channel sees of one customer: each offer's outcome, its open coupons, and
/// its segments.
struct Seen {
    key: String,
    decision: Decision,
    segments: Vec<String>,
}

/// Checks that offer state and profile agree for every customer, and the counters with
/// both; `known` customers must exist. Returns how many impressions were found.
fn check(seen: &[Seen], stats: &[OfferStats]) -> usize {
    let mut impressions = 0;
    for s in seen {
        let key = &s.key;
        let holds = |segment: String| s.segments.contains(&segment);
        for offer in OFFERS {
            let outcome = s
                .decision
                .explanation
                .iter()
                .find(|c| c.offer == offer)
                .map(|c| c.outcome)
                .unwrap_or_else(|| panic!("{key}: no explanation for offer {offer}"));
            let (saw, took) = (
                holds(format!("saw_{offer}")),
                holds(format!("took_{offer}")),
            );
            impressions += saw as usize;
            assert!(
                !took || saw,
                "{key}: accepted {offer} without an impression"
            );
            assert_eq!(
                outcome == Outcome::Accepted,
                took,
                "{key}, offer {offer}: offer state says {}, the profile says accepted={took}",
                outcome.name()
            );
            if !took {
                assert_eq!(
                    outcome == Outcome::Capped,
                    saw,
                    "{key}, offer {offer}: offer state says {}, the profile says shown={saw}",
                    outcome.name()
                );
            }
        }
        let open_a = s.decision.coupons.iter().any(|c| c.offer == "a");
        assert_eq!(
            open_a,
            holds("saw_a".into()) && !holds("took_a".into()),
            "{key}: the coupon of offer a is open iff a was shown and not accepted"
        );
    }
    for offer in OFFERS {
        let counted = |f: fn(&OfferStats) -> u64| -> u64 {
            stats
                .iter()
                .filter(|o| o.offer == offer && o.experiment.is_none())
                .map(f)
                .sum()
        };
        let members = |prefix: &str| {
            seen.iter()
                .filter(|s| s.segments.contains(&format!("{prefix}_{offer}")))
                .count() as u64
        };
        assert_eq!(
            counted(|o| o.impressions),
            members("saw"),
            "impressions of {offer}"
        );
        assert_eq!(
            counted(|o| o.accepts),
            members("took"),
            "accepts of {offer}"
        );
    }
    let shown_b = seen
        .iter()
        .filter(|s| s.segments.contains(&"saw_b".to_string()))
        .count();
    assert!(
        shown_b <= 30,
        "offer b's budget of 30 impressions: {shown_b}"
    );
    impressions
}

fn seen_in(engine: &Node, keys: &[String]) -> Vec<Seen> {
    keys.iter()
        .filter_map(|key| {
            let profile = engine.profile(key)?;
            Some(Seen {
                key: key.clone(),
                decision: engine.decide(&request(key, false)).unwrap(),
                segments: profile.segments,
            })
        })
        .collect()
}

/// Customers 0..12 arrive with a page view, 12..24 are new visitors whose first
/// decision creates them; three rounds of decisions, each first offer accepted every
/// other time. Returns the keys and the time at the end.
fn history(engine: &Node, clock: &ManualClock) -> (Vec<String>, i64) {
    let keys: Vec<String> = (0..24).map(|i| format!("user:{i}")).collect();
    let mut now = START;
    for key in &keys[..12] {
        engine
            .ingest(&RawEvent::new("page_view", "app", now).key(key))
            .unwrap();
    }
    for round in 0..3 {
        for (i, key) in keys.iter().enumerate() {
            now += 1000;
            clock.set_ms(now);
            let decision = engine.decide(&request(key, true)).unwrap();
            if let Some(first) = decision.offers.first().filter(|_| (i + round) % 2 == 0) {
                let target = FeedbackTarget::Decision {
                    decision_id: decision.decision_id,
                    offer: first.offer.clone(),
                };
                engine.feedback(FeedbackKind::Accept, &target).unwrap();
            }
        }
    }
    (keys, now)
}

/// The byte offsets where each record of a log file ends.
fn record_ends(file: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at + 8 <= file.len() {
        let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
        ends.push(at);
    }
    assert_eq!(at, file.len(), "the log ends with a whole record");
    ends
}

#[test]
fn a_crash_after_any_record_leaves_both_halves_agreeing() {
    let dir = TempDir::new("actions", "cut");
    let written = dir.0.join("written");
    let clock = Arc::new(ManualClock::new(START));
    let node = Store::open(&written, config(), clock.clone(), unsynced_wal()).unwrap();
    let (keys, end) = history(&node.node, &clock);
    let full = check(&seen_in(&node.node, &keys), &node.node.offer_stats());
    assert!(full > 60, "the history shows many offers: {full}");
    node.close().unwrap();

    let logs: Vec<_> = std::fs::read_dir(written.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    assert_eq!(logs.len(), 1, "one log file: {logs:?}");
    let log = std::fs::read(&logs[0]).unwrap();
    let ends = record_ends(&log);
    let mut previous = 0;
    for (records, &end_at) in ends.iter().enumerate() {
        let cut = dir.0.join(format!("cut-{records}"));
        copy_dir(&written, &cut);
        let name = logs[0].file_name().unwrap();
        std::fs::write(cut.join("wal").join(name), &log[..end_at]).unwrap();
        let clock = Arc::new(ManualClock::new(end));
        let node = Store::open(&cut, config(), clock, unsynced_wal()).unwrap();
        let found = check(&seen_in(&node.node, &keys), &node.node.offer_stats());
        assert!(
            found >= previous,
            "more of the log holds no fewer impressions"
        );
        previous = found;
        node.close().unwrap();
        std::fs::remove_dir_all(&cut).unwrap();
    }
    assert_eq!(previous, full, "the whole log holds everything");
}

fn start(data: &Path) -> (Process, String) {
    let config = data.with_extension("toml");
    std::fs::write(&config, CONFIG).unwrap();
    let options = [
        "--fsync".as_ref(),
        "never".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--snapshot-interval".as_ref(),
        "0".as_ref(),
    ];
    serve_binary(data, &options)
}

/// One client's stream of new customers `user:R-W-N`: three decisions each, with
/// recorded impressions, accepting every other decision's first offer, until the server
/// goes away. Every key tried is noted in `tried`.
async fn decide_until_killed(addr: String, prefix: String, tried: Arc<Mutex<Vec<String>>>) {
    let Ok(client) = omnia::client::Client::connect(&addr).await else {
        return;
    };
    for n in 0.. {
        let key = format!("user:{prefix}-{n}");
        tried.lock().unwrap().push(key.clone());
        for round in 0..3 {
            let Ok(decision) = client.decide(request(&key, true)).await else {
                return;
            };
            if let Some(first) = decision.offers.first().filter(|_| (n + round) % 2 == 0) {
                let target = FeedbackTarget::Decision {
                    decision_id: decision.decision_id,
                    offer: first.offer.clone(),
                };
                if client.feedback(FeedbackKind::Accept, target).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_decisions_and_feedback_leaves_both_halves_agreeing() {
    let dir = TempDir::new("actions", "sigkill");
    std::fs::create_dir_all(&dir.0).unwrap();
    let data = dir.0.join("data");
    let tried = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3u64 {
        let (mut child, addr) = start(&data);
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let prefix = format!("{round}-{w}");
                tokio::spawn(decide_until_killed(addr.clone(), prefix, tried.clone()))
            })
            .collect();
        // Killed once the clients are busy (twenty new customers into the round, however
        // slow the machine), at a different moment in each round.
        let started = tried.lock().unwrap().len();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tried.lock().unwrap().len() < started + 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the clients made no progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(15 * round)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for w in workers {
            w.await.unwrap();
        }
    }
    let (mut child, addr) = start(&data);
    let client = omnia::client::Client::connect(&addr).await.unwrap();
    let keys = tried.lock().unwrap().clone();
    let mut seen = Vec::new();
    for key in &keys {
        if let Some(profile) = client.profile(key).await.unwrap() {
            seen.push(Seen {
                key: key.clone(),
                decision: client.decide(request(key, false)).await.unwrap(),
                segments: profile.segments,
            });
        }
    }
    let stats = client.stats_with_offers().await.unwrap();
    let checked = std::panic::catch_unwind(|| check(&seen, &stats.offers));
    child.kill().unwrap();
    child.wait().unwrap();
    let impressions = match checked {
        Ok(impressions) => impressions,
        Err(panic) => {
            // Kept for a post-mortem (`omnia` can open it): the log is the evidence.
            let kept = dir.0.clone();
            std::mem::forget(dir);
            eprintln!("the data directory is kept at {}", kept.display());
            std::panic::resume_unwind(panic)
        }
    };
    assert!(
        impressions > 100,
        "the runs showed offers before the kills: {impressions}"
    );
}
