//! Experiments measured end to end: exposure at the first decision that could show the
//! experiment's offers (recorded or not, in every arm), goal events counted inside their
//! window after it, and the report over TCP (STATS, `experiments` section); a seeded
//! simulation whose true effect the report finds; a broken split the sample-ratio check
//! flags; the measurements surviving a restart from snapshot and log, and a reload (or
//! starting over, with a warning, when the arms change).

mod common;

use std::sync::Arc;

use common::{unsynced_wal, TempDir, TestServer, START_MS};
use omnia::client::Client;
use omnia::clock::{Clock, ManualClock};
use omnia::config::{Config, Source};
use omnia::engine::RawEvent;
use omnia::model::decision::DecisionRequest;
use omnia::model::experiment::{ComparisonState, ExperimentReport, GoalArm, SampleRatioVerdict};
use omnia::model::RawValue;
use omnia::node::Node;

const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;

fn ask(key: &str, channel: &str, record: bool) -> DecisionRequest {
    DecisionRequest {
        key: key.into(),
        channel: channel.into(),
        top: 1,
        record_impression: record,
        explain: false,
        context: Vec::new(),
    }
}

fn purchase(key: &str, at: i64, amount: f64) -> RawEvent {
    let mut e = RawEvent::new("purchase", "web", at).key(key);
    e.properties.push(("amount".into(), RawValue::Num(amount)));
    e
}

/// The arm of `experiment` that the goal's row `arm` names.
fn arm<'r>(report: &'r ExperimentReport, goal: &str, arm: &str) -> &'r GoalArm {
    let goal = report
        .goals
        .iter()
        .find(|g| g.goal == goal)
        .unwrap_or_else(|| panic!("no goal {goal} in {report:?}"));
    goal.arms.iter().find(|a| a.arm == arm).unwrap()
}

/// `/metrics`' running counts (`Node::experiment_counts`) equal those of the report,
/// which counts every customer again: the tallies kept as customers change never drift.
fn assert_counts_agree(node: &Node) {
    let recounted: Vec<omnia::decide::report::ArmCounts> = node
        .experiment_reports(None)
        .iter()
        .flat_map(|r| {
            r.arms
                .iter()
                .enumerate()
                .map(|(i, a)| omnia::decide::report::ArmCounts {
                    experiment: r.experiment.clone(),
                    arm: a.arm.clone(),
                    exposed: a.exposed,
                    converted: r
                        .goals
                        .iter()
                        .map(|g| (g.goal.clone(), g.arms[i].converted))
                        .collect(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(node.experiment_counts(), recounted);
}

/// The first `user:NAME-i` that `cart_reminder_boost` puts in `arm`.
fn customer_in(arm_name: &str, name: &str, config: &Config) -> String {
    let experiment = &config.decisions.experiments[0];
    (0..)
        .map(|i| format!("user:{name}-{i}"))
        .find(|key| experiment.arms[omnia::decide::assign_arm(experiment, key)].name == arm_name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sofia_converts_in_the_boosted_arm_and_a_standard_customer_in_the_baseline() {
    let server = TestServer::start().await;
    let config = Config::embedded_default().unwrap();
    let client = Client::connect(&server.addr).await.unwrap();
    // user:sofia is in `boosted` (docs/decisioning.md, section 8).
    let sofia = "user:sofia".to_string();
    let ben = customer_in("standard", "ben", &config);
    let late = customer_in("standard", "late", &config);
    let early = customer_in("boosted", "early", &config);
    let mut events = Vec::new();
    for key in [&sofia, &ben, &late, &early] {
        events.push(RawEvent::new("add_to_cart", "web", START_MS).key(key));
    }
    // `early` bought before any exposure: that purchase is not the experiment's.
    events.push(purchase(&early, START_MS + MINUTE, 40.0));
    let ack = client.ingest(events).await.unwrap();
    assert_eq!(ack.accepted, 5, "{:?}", ack.rejected);
    server.clock.advance_ms(31 * MINUTE);

    // Nobody is exposed before a decision.
    let report = &client.experiments().await.unwrap()[0];
    assert_eq!(report.experiment, "cart_reminder_boost");
    assert!(report.arms.iter().all(|a| a.exposed == 0), "{report:?}");

    // Sofia's reminder is sent and recorded; the web asks for Ben without recording
    // (it shows nothing yet): both are exposed, each in their arm, as is `late`.
    let d = client.decide(ask(&sofia, "email", true)).await.unwrap();
    assert_eq!(d.offers[0].offer, "cart_reminder");
    assert_eq!(d.arms[0].arm, "boosted");
    for key in [&ben, &late] {
        let d = client.decide(ask(key, "web", false)).await.unwrap();
        assert_eq!(d.arms[0].arm, "standard");
    }
    // A second decision does not expose again.
    client.decide(ask(&sofia, "web", false)).await.unwrap();

    // Three days later Sofia buys for 80 and Ben for 30; `late` buys after 8 days.
    server.clock.advance_ms(3 * DAY);
    let now = server.clock.now_ms();
    let ack = client
        .ingest(vec![purchase(&sofia, now, 80.0), purchase(&ben, now, 30.0)])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 2, "{:?}", ack.rejected);
    server.clock.advance_ms(5 * DAY);
    let ack = client
        .ingest(vec![purchase(&late, server.clock.now_ms(), 55.0)])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1, "{:?}", ack.rejected);

    let report = &client.experiments().await.unwrap()[0];
    let exposed: Vec<(String, u64)> = report
        .arms
        .iter()
        .map(|a| (a.arm.clone(), a.exposed))
        .collect();
    assert_eq!(
        exposed,
        [("standard".to_string(), 2), ("boosted".to_string(), 1)]
    );
    let (boosted, standard) = (
        arm(report, "purchase", "boosted"),
        arm(report, "purchase", "standard"),
    );
    assert_eq!((boosted.exposed, boosted.converted), (1, 1));
    assert_eq!(
        (standard.exposed, standard.converted),
        (2, 1),
        "the late purchase is outside the 7 days"
    );
    assert_eq!(standard.state, ComparisonState::Baseline);
    assert_eq!(boosted.state, ComparisonState::NotEnoughData);
    assert_eq!(arm(report, "revenue", "boosted").mean, Some(80.0));
    assert_eq!(arm(report, "revenue", "standard").mean, Some(15.0));
    assert_eq!(
        report.sample_ratio.verdict,
        SampleRatioVerdict::NotEnoughData
    );
    // What /metrics publishes: the same counts, without the comparisons.
    let counts: Vec<_> = server
        .node
        .experiment_counts()
        .into_iter()
        .map(|c| (c.arm, c.exposed, c.converted))
        .collect();
    let goals = |purchase, revenue| {
        vec![
            ("purchase".to_string(), purchase),
            ("revenue".to_string(), revenue),
        ]
    };
    assert_eq!(
        counts,
        [
            ("standard".to_string(), 2, goals(1, 1)),
            ("boosted".to_string(), 1, goals(1, 1)),
        ]
    );
    server.shutdown().await;
}

/// A config of its own: one offer anyone may get, a control arm and a treated one.
fn simulation_config(min_customers: u32) -> Config {
    let text = simulation_config_text(min_customers);
    Config::from_source(&Source::new("simulation.toml", text)).unwrap_or_else(|e| panic!("{e}"))
}

fn simulation_config_text(min_customers: u32) -> String {
    format!(
        r#"
channels = ["web"]
[identity]
namespaces = ["user"]
[events.visit]
[events.purchase]
properties = {{ amount = "number" }}
[offers.promo]
value = 1
[experiments.promo_test]
arms = [
  {{ name = "control", weight = 50, control = true }},
  {{ name = "treated", weight = 50 }},
]
goals = ["bought"]
min_customers = {min_customers}
[goals.bought]
event = "purchase"
window = "7d"
"#
    )
}

/// splitmix64: a fixed-seed stream for the simulations.
struct Random(u64);

impl Random {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 20,000 customers visit and are decided for; each buys with the probability its arm
/// has (`skip_control`: the share of control customers whose decision is lost, a broken
/// channel). Returns the report.
fn simulate(rates: [f64; 2], skip_control: f64, seed: u64) -> ExperimentReport {
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = Node::new(simulation_config(100), clock.clone());
    let mut random = Random(seed);
    for i in 0..20_000 {
        let key = format!("user:{i}");
        node.ingest(&RawEvent::new("visit", "web", START_MS).key(&key))
            .unwrap();
        let arm = omnia::decide::assign_arm(&node.config().decisions.experiments[0], &key);
        if arm == 0 && random.next() < skip_control {
            continue;
        }
        let d = node.decide(&ask(&key, "web", false)).unwrap();
        assert_eq!(d.offers.is_empty(), arm == 0, "control gets no offer");
        if random.next() < rates[arm] {
            node.ingest(&purchase(&key, START_MS, 10.0)).unwrap();
        }
    }
    assert_counts_agree(&node);
    node.experiment_reports(None).remove(0)
}

#[test]
fn a_true_two_point_lift_is_found_and_its_interval_holds_it() {
    let report = simulate([0.10, 0.12], 0.0, 17);
    assert_eq!(
        report.sample_ratio.verdict,
        SampleRatioVerdict::Ok,
        "{report:?}"
    );
    let treated = arm(&report, "bought", "treated");
    assert_eq!(treated.state, ComparisonState::Compared);
    let lift = treated.rate_lift.as_ref().unwrap();
    assert!(lift.significant && lift.p_value < 0.05, "{lift:?}");
    assert!(lift.absolute.estimate > 0.0, "{lift:?}");
    assert!(
        lift.absolute.low <= 0.02 && 0.02 <= lift.absolute.high,
        "the 95% interval holds the true 2 points: {lift:?}"
    );
    assert!(lift.chance_to_beat.unwrap() > 0.99, "{lift:?}");
    let exposed: u64 = report.arms.iter().map(|a| a.exposed).sum();
    assert_eq!(exposed, 20_000);
}

#[test]
fn a_broken_split_is_flagged_by_the_sample_ratio_check() {
    // Configured 50/50; losing 18% of control's decisions realises about 55/45.
    let report = simulate([0.10, 0.10], 0.18, 5);
    assert_eq!(
        report.sample_ratio.verdict,
        SampleRatioVerdict::Mismatch,
        "{:?}",
        report.arms
    );
    let control = report.arms[0].exposed as f64;
    let share = control / report.arms.iter().map(|a| a.exposed).sum::<u64>() as f64;
    assert!((0.43..0.47).contains(&share), "control's share {share}");
}

#[test]
fn measurements_survive_a_restart_from_snapshot_and_log() {
    let dir = TempDir::new("experiments", "restart");
    let clock = Arc::new(ManualClock::new(START_MS));
    let config = || simulation_config(2);
    let store = omnia::store::Store::open(&dir.0, config(), clock.clone(), unsynced_wal()).unwrap();
    let node = store.node.clone();
    let run = |from: usize, to: usize| {
        for i in from..to {
            let key = format!("user:{i}");
            node.ingest(&RawEvent::new("visit", "web", START_MS).key(&key))
                .unwrap();
            node.decide(&ask(&key, "web", i % 2 == 0)).unwrap();
            if i % 3 == 0 {
                node.ingest(&purchase(&key, START_MS, 10.0)).unwrap();
            }
        }
    };
    run(0, 60);
    omnia::store::snapshot::write(&store.data, &node).unwrap();
    run(60, 120);
    let before = node.experiment_reports(None);
    assert_eq!(
        before[0].arms.iter().map(|a| a.exposed).sum::<u64>(),
        120,
        "{before:?}"
    );
    store.close().unwrap();
    let store = omnia::store::Store::open(&dir.0, config(), clock, unsynced_wal()).unwrap();
    assert!(store.recovered.snapshot.is_some());
    assert_eq!(store.node.experiment_reports(None), before);
    assert_counts_agree(&store.node);
    store.close().unwrap();
}

#[test]
fn a_reload_keeps_an_unchanged_experiment_and_restarts_one_whose_arms_changed_with_a_warning() {
    let dir = TempDir::new("experiments", "reload");
    let clock = Arc::new(ManualClock::new(START_MS));
    let store =
        omnia::store::Store::open(&dir.0, simulation_config(2), clock, unsynced_wal()).unwrap();
    let node = store.node.clone();
    for i in 0..40 {
        let key = format!("user:{i}");
        node.ingest(&RawEvent::new("visit", "web", START_MS).key(&key))
            .unwrap();
        node.decide(&ask(&key, "web", false)).unwrap();
        if i % 4 == 0 {
            node.ingest(&purchase(&key, START_MS, 10.0)).unwrap();
        }
    }
    let before = node.experiment_reports(None);
    let reload = |current: &Node, text: String| {
        let config = Config::from_source(&Source::new("reloaded.toml", text)).unwrap();
        omnia::store::reload::prepare(&store.data, current, config, &|_| {})
            .unwrap()
            .finish(&store.data, current)
            .unwrap()
    };
    let text = simulation_config_text(2);

    // Only a new offer: the experiment and its measurement carry over, no warning.
    let (kept, report) = reload(&node, text.clone() + "[offers.extra]\nvalue = 1\n");
    assert!(report.experiments_reset.is_empty(), "{report:?}");
    assert!(!report.to_string().contains("warning"), "{report}");
    assert_eq!(kept.experiment_reports(None), before);
    assert_counts_agree(&kept);

    // The treated arm renamed: the measurement starts over, and the report says so.
    let renamed = text.replace("\"treated\"", "\"treated_v2\"");
    let (reset, report) = reload(&kept, renamed);
    assert_eq!(report.experiments_reset, ["promo_test"]);
    assert!(
        report.to_string().contains(
            "warning: experiment `promo_test`'s arms changed: its customers are assigned again and its measurement starts over"
        ),
        "{report}"
    );
    let after = reset.experiment_reports(None).remove(0);
    assert_eq!(after.arms.iter().map(|a| a.exposed).sum::<u64>(), 0);
    // Its customers are exposed again from their next decision, in the new arms.
    reset.decide(&ask("user:1", "web", false)).unwrap();
    let after = reset.experiment_reports(None).remove(0);
    assert_eq!(after.arms.iter().map(|a| a.exposed).sum::<u64>(), 1);
    assert_counts_agree(&reset);
    store.close().unwrap();
}

#[test]
fn the_running_counts_follow_merges_conversions_and_forgotten_customers() {
    let clock = Arc::new(ManualClock::new(START_MS));
    let node = Node::new(simulation_config(2), clock.clone());
    for i in 0..200 {
        let key = format!("user:{i}");
        node.ingest(&RawEvent::new("visit", "web", START_MS).key(&key))
            .unwrap();
        node.decide(&ask(&key, "web", i % 2 == 0)).unwrap();
        if i % 3 == 0 {
            node.ingest(&purchase(&key, START_MS + 1000, 10.0)).unwrap();
        }
    }
    assert_counts_agree(&node);
    let exposed = |node: &Node| -> u64 { node.experiment_counts().iter().map(|a| a.exposed).sum() };
    assert_eq!(exposed(&node), 200);
    // Pairs merge: in the same arm one exposure stays, in different arms the survivor's.
    for i in 0..50 {
        let event = RawEvent::new("visit", "web", START_MS + 2000)
            .key(&format!("user:{}", 2 * i))
            .key(&format!("user:{}", 2 * i + 1));
        node.ingest(&event).unwrap();
        // A purchase after the merge converts the merged customer (once).
        node.ingest(&purchase(
            &format!("user:{}", 2 * i + 1),
            START_MS + 3000,
            5.0,
        ))
        .unwrap();
    }
    assert_counts_agree(&node);
    assert_eq!(exposed(&node), 150);
    for i in 150..160 {
        let mut receipt = omnia::engine::Receipt::default();
        node.forget_with(&format!("user:{i}"), &mut receipt)
            .unwrap();
    }
    assert_counts_agree(&node);
    assert_eq!(exposed(&node), 140);
}
