//! Decisions in-process, with an injected clock: the Sofia journey extended to offers,
//! then every constraint on its own (caps sliding with the clock, cooldowns, no-repeat,
//! budgets under contention, stickiness, priorities and ranking, experiments, context,
//! new visitors) and the errors a channel can provoke.

use std::sync::Arc;

use omnia::clock::{Clock, ManualClock};
use omnia::config::{Config, Source};
use omnia::decide::{assign_arm, DecideError};
use omnia::engine::RawEvent;
use omnia::model::decision::{Decision, DecisionRequest, FeedbackKind, FeedbackTarget, Outcome};
use omnia::model::RawValue;
use omnia::node::Node;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// Monday 2 March 2026, 10:00 UTC.
const START: i64 = 1_772_445_600_000;

/// A small config that isolates each constraint on its own offer.
const TEST_CONFIG: &str = r#"
channels = ["web", "app", "email"]
[identity]
namespaces = ["user", "anon"]
[attributes]
tier = "string"
[events.view]
[events.browse]
[events.identify]
[events.purchase]
properties = { amount = "number" }
[events.offer_impression]
properties = { offer = "string", decision = "string" }
[events.offer_click]
properties = { offer = "string", decision = "string" }
[events.offer_accept]
properties = { offer = "string", decision = "string" }
[events.offer_dismiss]
properties = { offer = "string" }
[segments.saw_capped]
rule = 'count(offer_impression where offer == "capped", 1d) >= 1'
[scores.affinity]
kind = "logistic"
intercept = 0
features = [{ expr = "min(count(view, 1d), 10)", weight = 0.5 }]

[decisions]
fallback = "fallback"
context = { page = "string" }
feedback_events = { impression = "offer_impression", click = "offer_click", accept = "offer_accept", dismiss = "offer_dismiss" }

[offers.capped]
rule = "ever(view)"
value = 10
caps = [{ impressions = 2, per = "1h" }, { impressions = 1, per = "1d", channel = "email" }]

[offers.cooling]
rule = "ever(purchase)"
value = 9
cooldown = { dismiss = "2h" }

[offers.once]
rule = 'attr.tier == "gold"'
value = 8

[offers.again]
rule = 'attr.tier == "silver"'
value = 7
repeat = true
cooldown = { accept = "1d" }

[offers.limited]
rule = 'attr.tier == "budget"'
value = 6
budget = { accepts = 5 }

[offers.shown_limited]
rule = 'attr.tier == "shown"'
value = 6
budget = { impressions = 7, per = "1d" }

[offers.ranked]
rule = 'attr.tier == "ranked"'
value = 2
propensity = "affinity"

[offers.ranked_rule]
rule = 'attr.tier == "ranked"'
value = 3
rank = "value * 0.1"

[offers.vip]
rule = 'attr.tier == "ranked"'
value = 0.01
priority = 5

[offers.checkout]
rule = 'context.page == "checkout"'
channels = ["web"]
value = 50

[offers.sticky_one]
rule = 'attr.tier == "sticky"'
value = 1
sticky = "1h"

[offers.sticky_two]
rule = 'attr.tier == "sticky" and count(browse, 1d) >= 3'
value = 20

[offers.fallback]
value = 0.5

[experiments.layout]
arms = [
  { name = "control", weight = 10, control = true },
  { name = "focus", weight = 30, offers = ["capped", "fallback"] },
  { name = "boost", weight = 60, weights = { cooling = 3.0 } },
]
"#;

struct World {
    clock: Arc<ManualClock>,
    node: Node,
}

impl World {
    fn with(config: Config) -> World {
        let clock = Arc::new(ManualClock::new(START));
        let engine = Node::new(config, clock.clone());
        World {
            clock,
            node: engine,
        }
    }

    fn test() -> World {
        World::with(
            Config::from_source(&Source::new("test.toml", TEST_CONFIG))
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    fn retail() -> World {
        World::with(Config::embedded_default().expect("default config"))
    }

    fn wait(&self, ms: i64) {
        self.clock.advance_ms(ms);
        self.node.tick();
    }

    fn send(&self, event: &str, channel: &str, keys: &[&str], attrs: &[(&str, RawValue)]) {
        let mut e = RawEvent::new(event, channel, self.clock.now_ms());
        e.keys = keys.iter().map(|k| k.to_string()).collect();
        e.attributes = attrs
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        self.node.ingest(&e).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sofia's account, with her e-mail address and her consent to e-mail.
    fn sofia_reachable_by_email(&self) {
        self.send(
            "identify",
            "app",
            &["user:sofia", "email:sofia@example.com"],
            &[("email_opt_in", RawValue::Bool(true))],
        );
    }

    fn tier(&self, key: &str, tier: &str) {
        self.send(
            "identify",
            "web",
            &[key],
            &[("tier", RawValue::Str(tier.into()))],
        );
    }

    fn ask(&self, key: &str, channel: &str, top: u8, record: bool) -> Decision {
        self.node
            .decide(&request(key, channel, top, record))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The offers a channel would show, best first.
    fn offers(&self, key: &str, channel: &str, top: u8) -> Vec<String> {
        names(&self.ask(key, channel, top, false))
    }

    fn show(&self, key: &str, channel: &str, top: u8) -> Decision {
        self.ask(key, channel, top, true)
    }

    fn feedback(&self, kind: FeedbackKind, key: &str, offer: &str, channel: &str) {
        self.try_feedback(kind, key, offer, channel)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_feedback(
        &self,
        kind: FeedbackKind,
        key: &str,
        offer: &str,
        channel: &str,
    ) -> Result<omnia::model::decision::FeedbackResult, DecideError> {
        self.node.feedback(
            kind,
            &FeedbackTarget::Customer {
                key: key.into(),
                offer: offer.into(),
                channel: channel.into(),
            },
        )
    }

    fn outcome(&self, key: &str, channel: &str, offer: &str) -> Outcome {
        let mut r = request(key, channel, 3, false);
        r.explain = true;
        let d = self.node.decide(&r).unwrap_or_else(|e| panic!("{e}"));
        d.explanation
            .iter()
            .find(|c| c.offer == offer)
            .map(|c| c.outcome)
            .unwrap_or_else(|| panic!("{offer} not explained"))
    }
}

fn request(key: &str, channel: &str, top: u8, record: bool) -> DecisionRequest {
    DecisionRequest {
        key: key.into(),
        channel: channel.into(),
        top,
        record_impression: record,
        explain: false,
        context: Vec::new(),
    }
}

fn names(d: &Decision) -> Vec<String> {
    d.offers.iter().map(|o| o.offer.clone()).collect()
}

/// A key whose arm in the test config's experiment is `arm`.
fn key_in_arm(world: &World, arm: &str) -> String {
    key_in_arm_with(world, arm, "user:k")
}

fn key_in_arm_with(world: &World, arm: &str, prefix: &str) -> String {
    let experiment = &world.node.config().decisions.experiments[0];
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| experiment.arms[assign_arm(experiment, k)].name == arm)
        .unwrap_or_default()
}

#[test]
fn sofia_is_offered_the_cart_reminder_on_every_channel_until_she_accepts_it() {
    let w = World::retail();
    // Sofia's account, known for a while, reachable by e-mail.
    w.sofia_reachable_by_email();
    w.wait(2 * DAY);
    // Anonymous on the web: shoes into the cart. Then she logs in on the app.
    w.send("add_to_cart", "web", &["anon:c1"], &[]);
    w.send("page_view", "app", &["anon:c1", "user:sofia"], &[]);
    w.wait(31 * MINUTE);
    let profile = w.node.profile("user:sofia").expect("profile");
    assert!(profile.in_segment("cart_abandoners"), "{profile}");

    // The e-mail channel asks and sends the reminder.
    let email = w.show("email:sofia@example.com", "email", 1);
    assert_eq!(names(&email), ["cart_reminder"]);
    assert!(email.known_customer);
    assert_eq!(email.coupons.len(), 1, "the reminder issues a coupon");
    let coupon = email.coupons[0].clone();
    assert!(coupon.code.starts_with("CART10-"), "{}", coupon.code);

    // An hour later on the app and the web: the same offer, sticky, and her coupon.
    w.wait(HOUR);
    for channel in ["app", "web"] {
        let d = w.ask("user:sofia", channel, 2, false);
        assert_eq!(d.offers[0].offer, "cart_reminder", "{channel}: {d:?}");
        assert!(d.offers[0].sticky, "{channel}");
        assert_eq!(d.coupons, vec![coupon.clone()], "{channel}");
    }
    // The arm is the same on every channel.
    let arms: Vec<_> = ["email", "app", "web"]
        .iter()
        .map(|c| w.ask("user:sofia", c, 1, false).arms)
        .collect();
    assert!(arms.windows(2).all(|a| a[0] == a[1]) && arms[0].len() == 1);

    // She accepts it in the store with the coupon: no channel offers it again.
    let accepted = w
        .try_feedback(FeedbackKind::Accept, "user:sofia", "cart_reminder", "store")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accepted.coupon.map(|c| c.code), Some(coupon.code.clone()));
    for channel in ["email", "sms", "app", "web", "store"] {
        let d = w.ask("user:sofia", channel, 3, false);
        assert!(
            !names(&d).contains(&"cart_reminder".to_string()),
            "{channel}: {d:?}"
        );
        assert!(d.coupons.is_empty(), "the coupon is redeemed");
    }
    // She is still a cart abandoner by the rule (accepting is not buying yet); the
    // acceptance is what excludes the offer.
    assert_eq!(
        w.outcome("user:sofia", "email", "cart_reminder"),
        Outcome::Accepted
    );
    // The feedback is in her profile as events, so rules and scores can read it.
    let profile = w.node.profile("user:sofia").expect("profile");
    assert!(profile.last_seen as i64 * 1000 >= w.clock.now_ms() - 1000);
}

#[test]
fn caps_slide_with_the_clock() {
    let w = World::test();
    let k = key_in_arm(&w, "boost");
    w.send("view", "web", &[&k], &[]);
    assert_eq!(w.offers(&k, "web", 1), ["capped"]);
    w.show(&k, "web", 1);
    // Impressions flow into the profile, where rules read them.
    assert!(w
        .node
        .profile(&k)
        .expect("profile")
        .in_segment("saw_capped"));
    w.wait(10 * MINUTE);
    w.show(&k, "app", 1);
    assert_eq!(w.outcome(&k, "web", "capped"), Outcome::Capped);
    // One second before the first impression leaves the hour, still capped.
    w.wait(50 * MINUTE - 1000);
    assert_eq!(w.outcome(&k, "web", "capped"), Outcome::Capped);
    w.wait(1000);
    assert_eq!(w.offers(&k, "web", 1), ["capped"]);
    // The e-mail cap: one per day on e-mail only.
    w.show(&k, "email", 1);
    w.wait(2 * HOUR);
    assert_eq!(w.outcome(&k, "email", "capped"), Outcome::Capped);
    assert_eq!(w.offers(&k, "app", 1), ["capped"]);
    w.wait(22 * HOUR);
    assert_eq!(w.offers(&k, "email", 1), ["capped"]);
}

#[test]
fn a_dismissal_cools_an_offer_down_for_exactly_its_cooldown() {
    let w = World::test();
    let k = key_in_arm(&w, "boost");
    w.send("purchase", "web", &[&k], &[]);
    assert_eq!(w.offers(&k, "app", 1), ["cooling"]);
    w.feedback(FeedbackKind::Dismiss, &k, "cooling", "app");
    assert_eq!(w.outcome(&k, "web", "cooling"), Outcome::Cooldown);
    w.wait(2 * HOUR - 1000);
    assert_eq!(w.outcome(&k, "web", "cooling"), Outcome::Cooldown);
    w.wait(1000);
    assert_eq!(w.offers(&k, "web", 1), ["cooling"]);
}

#[test]
fn accepted_offers_do_not_come_back_unless_they_repeat() {
    let w = World::test();
    let gold = key_in_arm(&w, "boost");
    w.tier(&gold, "gold");
    assert_eq!(w.offers(&gold, "web", 1), ["once"]);
    w.feedback(FeedbackKind::Accept, &gold, "once", "web");
    w.wait(30 * DAY);
    assert_eq!(w.outcome(&gold, "app", "once"), Outcome::Accepted);

    let silver = key_in_arm_with(&w, "boost", "anon:k");
    w.tier(&silver, "silver");
    w.feedback(FeedbackKind::Accept, &silver, "again", "app");
    assert_eq!(w.outcome(&silver, "app", "again"), Outcome::Cooldown);
    w.wait(DAY);
    assert_eq!(w.offers(&silver, "app", 1), ["again"]);
}

#[test]
fn an_accept_budget_is_never_overspent_by_racing_channels() {
    let w = World::test();
    let keys: Vec<String> = (0..64).map(|i| format!("anon:b{i}")).collect();
    for k in &keys {
        w.tier(k, "budget");
    }
    let results: Vec<Result<_, DecideError>> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks(4)
            .map(|chunk| {
                let w = &w;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|k| w.try_feedback(FeedbackKind::Accept, k, "limited", "web"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 5, "exactly the budget");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(r, DecideError::BudgetSpent { limit: 5, .. }),
            "{r}"
        );
        assert!(r.to_string().contains("5 accepts"), "{r}");
    }
    // A spent budget takes the offer out of every decision.
    let fresh = "anon:b_late";
    w.tier(fresh, "budget");
    let outcome = w.outcome(fresh, "web", "limited");
    assert!(matches!(
        outcome,
        Outcome::Budget | Outcome::Control | Outcome::Experiment
    ));
    let stats = w.node.offer_stats();
    let total: u64 = stats
        .iter()
        .filter(|s| s.offer == "limited" && s.experiment.is_none())
        .map(|s| s.accepts)
        .sum();
    assert_eq!(total, 5);
}

#[test]
fn an_impression_budget_is_spent_exactly_by_decisions_that_record() {
    let w = World::test();
    let keys: Vec<String> = (0..200)
        .map(|i| format!("anon:s{i}"))
        .filter(|k| {
            let e = &w.node.config().decisions.experiments[0];
            e.arms[assign_arm(e, k)].name == "boost"
        })
        .take(40)
        .collect();
    for k in &keys {
        w.tier(k, "shown");
    }
    let shown: usize = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks(3)
            .map(|chunk| {
                let w = &w;
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter(|k| names(&w.show(k, "web", 1)).contains(&"shown_limited".into()))
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    assert_eq!(shown, 7);
    // The budget is per day: the next UTC day starts from zero.
    w.wait(DAY);
    assert_eq!(names(&w.show(&keys[0], "web", 1)), ["shown_limited"]);
}

#[test]
fn priority_tiers_then_scores_decide_the_order() {
    let w = World::test();
    let k = key_in_arm(&w, "boost");
    w.tier(&k, "ranked");
    // With no views the affinity is logistic(0) = 0.5, so `ranked` scores 2 * 0.5 = 1,
    // above `ranked_rule` with its own expression, 3 * 0.1; `vip` is in a higher tier.
    let d = w.ask(&k, "web", 3, false);
    assert_eq!(names(&d), ["vip", "ranked", "ranked_rule"]);
    assert!((d.offers[1].score - 1.0).abs() < 1e-12);
    assert!((d.offers[2].score - 0.3).abs() < 1e-12);
    assert_eq!(d.offers[0].priority, 5);
}

#[test]
fn the_offer_shown_on_one_channel_leads_on_every_channel_while_sticky() {
    let w = World::test();
    let k = key_in_arm(&w, "boost");
    w.tier(&k, "sticky");
    assert_eq!(names(&w.show(&k, "web", 1)), ["sticky_one"]);
    // Now a better offer becomes eligible; the app still leads with what the web showed.
    for _ in 0..3 {
        w.send("browse", "app", &[&k], &[]);
    }
    let d = w.ask(&k, "app", 2, false);
    assert_eq!(names(&d), ["sticky_one", "sticky_two"]);
    assert!(d.offers[0].sticky && !d.offers[1].sticky);
    // When the sticky window ends, ranking takes over again.
    w.wait(HOUR);
    assert_eq!(w.offers(&k, "email", 2), ["sticky_two", "sticky_one"]);
    // A dismissal releases stickiness at once.
    w.show(&k, "web", 1);
    let k2 = key_in_arm_with(&w, "boost", "anon:k");
    w.tier(&k2, "sticky");
    w.show(&k2, "web", 1);
    w.feedback(FeedbackKind::Dismiss, &k2, "sticky_one", "web");
    for _ in 0..3 {
        w.send("browse", "app", &[&k2], &[]);
    }
    assert_eq!(w.offers(&k2, "app", 2), ["sticky_two", "sticky_one"]);
}

#[test]
fn experiment_arms_are_stable_and_follow_their_weights() {
    let w = World::test();
    let experiment = &w.node.config().decisions.experiments[0];
    let mut counts = [0u64; 3];
    for i in 0..100_000 {
        let key = format!("user:{i}");
        let arm = assign_arm(experiment, &key);
        assert_eq!(arm, assign_arm(experiment, &key), "deterministic");
        counts[arm] += 1;
    }
    // Binomial standard deviations: sqrt(n p (1 - p)) = 95, 145, 155. Five of them is a
    // bound a correct hash passes with overwhelming probability, and the keys are fixed.
    for (arm, (&n, weight)) in counts.iter().zip([10.0, 30.0, 60.0]).enumerate() {
        let p: f64 = weight / 100.0;
        let expected = 100_000.0 * p;
        let sd = (100_000.0 * p * (1.0 - p)).sqrt();
        assert!(
            (n as f64 - expected).abs() < 5.0 * sd,
            "arm {arm}: {n} customers, expected {expected} ± {}",
            5.0 * sd
        );
    }

    // A customer keeps its arm when it logs in and its primary key changes.
    let anon = (0..)
        .map(|i| format!("anon:v{i}"))
        .find(|k| {
            let user = k.replace("anon:", "user:");
            assign_arm(experiment, k) != assign_arm(experiment, &user)
        })
        .unwrap_or_default();
    w.send("view", "web", &[&anon], &[]);
    let before = w.ask(&anon, "web", 1, false).arms;
    let user = anon.replace("anon:", "user:");
    w.send("view", "app", &[&anon, &user], &[]);
    assert_eq!(
        w.node.profile(&anon).map(|p| p.primary_key),
        Some(user.clone())
    );
    assert_eq!(w.ask(&user, "email", 1, false).arms, before);
}

#[test]
fn arms_change_the_offer_set_and_the_ranking_and_control_gets_the_fallback() {
    let w = World::test();
    let control = key_in_arm(&w, "control");
    w.send("view", "web", &[&control], &[]);
    w.send("purchase", "web", &[&control], &[]);
    assert_eq!(w.offers(&control, "web", 3), ["fallback"]);
    assert_eq!(w.outcome(&control, "web", "capped"), Outcome::Control);

    let focus = key_in_arm(&w, "focus");
    w.send("view", "web", &[&focus], &[]);
    w.send("purchase", "web", &[&focus], &[]);
    assert_eq!(w.offers(&focus, "web", 3), ["capped"]);
    assert_eq!(w.outcome(&focus, "web", "cooling"), Outcome::Experiment);

    // In `boost` cooling's score is tripled: 27 beats capped's 10.
    let boost = key_in_arm(&w, "boost");
    w.send("view", "web", &[&boost], &[]);
    w.send("purchase", "web", &[&boost], &[]);
    let d = w.ask(&boost, "web", 2, false);
    assert_eq!(names(&d), ["cooling", "capped"]);
    assert_eq!(d.offers[0].score, 27.0);
    assert_eq!(d.arms[0].arm, "boost");
}

#[test]
fn context_fields_reach_eligibility_rules() {
    let w = World::test();
    let k = key_in_arm(&w, "boost");
    let mut r = request(&k, "web", 1, false);
    r.context = vec![("page".into(), RawValue::Str("checkout".into()))];
    let d = w.node.decide(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&d), ["checkout"]);
    assert!(!d.known_customer);
    r.context = vec![("page".into(), RawValue::Str("home".into()))];
    assert_eq!(names(&w.node.decide(&r).expect("decide")), ["fallback"]);
    r.context = vec![("page".into(), RawValue::Num(3.0))];
    let err = w.node.decide(&r).expect_err("a number for a string field");
    assert_eq!(
        err.to_string(),
        "context field `page` must be a string, found a number"
    );
    r.context = vec![("shelf".into(), RawValue::Str("x".into()))];
    let err = w.node.decide(&r).expect_err("undeclared field");
    assert!(
        err.to_string().contains("unknown context field `shelf`"),
        "{err}"
    );
}

#[test]
fn a_new_visitor_gets_the_offers_new_visitors_qualify_for() {
    let w = World::retail();
    let d = w.ask("anon:first-visit", "web", 3, false);
    assert!(!d.known_customer);
    assert_eq!(names(&d)[0], "welcome_discount");
    assert!(
        w.node.profile("anon:first-visit").is_none(),
        "asking creates nothing"
    );
    // Recording the impression creates the profile, with the impression in it.
    let shown = w.show("anon:first-visit", "web", 1);
    assert_eq!(names(&shown), ["welcome_discount"]);
    let profile = w.node.profile("anon:first-visit").expect("created");
    assert!(profile.in_segment("new_visitors"));
    assert_eq!(shown.coupons.len(), 1);
    // The next channel sees the same offer first and the same coupon.
    let app = w.ask("anon:first-visit", "app", 1, false);
    assert_eq!(names(&app), ["welcome_discount"]);
    assert_eq!(app.coupons, shown.coupons);
}

#[test]
fn feedback_by_decision_id_and_its_errors() {
    let w = World::test();
    let k = key_in_arm(&w, "boost");
    w.send("view", "web", &[&k], &[]);
    let d = w.ask(&k, "web", 1, false);
    let by_id = |offer: &str, id: u64| {
        w.node.feedback(
            FeedbackKind::Click,
            &FeedbackTarget::Decision {
                decision_id: id,
                offer: offer.into(),
            },
        )
    };
    let ok = by_id("capped", d.decision_id).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.decision_id, d.decision_id);
    let stats = w.node.offer_stats();
    let clicks = stats
        .iter()
        .find(|s| s.offer == "capped" && s.channel == "web" && s.arm.as_deref() == Some("boost"))
        .map(|s| (s.decisions, s.clicks));
    assert_eq!(clicks, Some((1, 1)));

    assert!(matches!(
        by_id("once", d.decision_id),
        Err(DecideError::OfferNotInDecision { .. })
    ));
    assert!(matches!(
        by_id("nope", d.decision_id),
        Err(DecideError::UnknownOffer { .. })
    ));
    let unknown = by_id("capped", 7).expect_err("never made");
    assert!(
        unknown
            .to_string()
            .contains("send the feedback with the customer key"),
        "{unknown}"
    );
    assert!(matches!(
        w.node.decide(&request(&k, "tv", 1, false)),
        Err(DecideError::UnknownChannel { .. })
    ));
    assert!(matches!(
        w.node.decide(&request("nokey", "web", 1, false)),
        Err(DecideError::BadKey { .. })
    ));
    assert!(matches!(
        w.node.decide(&request(&k, "web", 0, false)),
        Err(DecideError::ZeroTop)
    ));
}

#[test]
fn an_explanation_covers_every_offer() {
    let w = World::test();
    let k = key_in_arm(&w, "boost");
    w.send("view", "web", &[&k], &[]);
    let mut r = request(&k, "app", 1, false);
    r.explain = true;
    let d = w.node.decide(&r).expect("decide");
    let offers = &w.node.config().decisions.offers;
    assert_eq!(d.explanation.len(), offers.len());
    let outcome = |name: &str| {
        d.explanation
            .iter()
            .find(|c| c.offer == name)
            .map(|c| c.outcome)
    };
    assert_eq!(outcome("capped"), Some(Outcome::Chosen));
    assert_eq!(outcome("cooling"), Some(Outcome::Rule));
    assert_eq!(outcome("checkout"), Some(Outcome::Channel));
    assert_eq!(outcome("fallback"), Some(Outcome::Fallback));
    let chosen = d
        .explanation
        .iter()
        .find(|c| c.offer == "capped")
        .map(|c| c.score);
    assert_eq!(chosen, Some(10.0));
}

#[test]
fn an_impression_returns_the_customers_open_coupon_whether_or_not_it_issued_it() {
    let w = World::retail();
    w.sofia_reachable_by_email();
    w.send("add_to_cart", "web", &["user:sofia"], &[]);
    w.wait(31 * MINUTE);
    let first = w
        .try_feedback(
            FeedbackKind::Impression,
            "user:sofia",
            "cart_reminder",
            "email",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let issued = first
        .coupon
        .expect("the first impression issues the coupon");
    // A second impression, on another channel: the same open coupon, none issued anew.
    w.wait(MINUTE);
    let second = w
        .try_feedback(
            FeedbackKind::Impression,
            "user:sofia",
            "cart_reminder",
            "app",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.coupon, Some(issued.clone()));
    let d = w.ask("user:sofia", "web", 3, false);
    assert_eq!(d.coupons, vec![issued]);
}

#[test]
fn attributes_tied_on_the_second_keep_the_surviving_profiles_value_in_a_merge() {
    let w = World::retail();
    // Two profiles set `country` in the same second; the anonymous one arrives later.
    w.send(
        "identify",
        "web",
        &["user:ada"],
        &[("country", RawValue::Str("NL".into()))],
    );
    w.send(
        "identify",
        "web",
        &["anon:a1"],
        &[("country", RawValue::Str("BE".into()))],
    );
    // One event with both keys merges them; `user:` is the preferred namespace, so the
    // account survives, and at the same second its value is kept.
    w.send("page_view", "web", &["anon:a1", "user:ada"], &[]);
    let profile = w.node.profile("anon:a1").expect("merged");
    assert!(profile.keys.contains(&"user:ada".to_string()), "{profile}");
    assert_eq!(
        profile.attribute("country"),
        Some(&RawValue::Str("NL".into()))
    );
    // Within one profile the later arrival at the same second wins.
    w.send(
        "identify",
        "web",
        &["user:ada"],
        &[("country", RawValue::Str("DE".into()))],
    );
    let profile = w.node.profile("user:ada").expect("profile");
    assert_eq!(
        profile.attribute("country"),
        Some(&RawValue::Str("DE".into()))
    );
}
