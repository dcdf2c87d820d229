//! The Sofia journey: the story omnichannel marketing is about, told against the engine
//! with the embedded default config and an injected clock.
//!
//! An anonymous visitor arrives on the web from a flyer's campaign URL, views shoes,
//! adds them to the cart and leaves. She logs in on the app, where she already has an
//! account profile, so the anonymous profile merges into it. Thirty minutes pass with
//! no purchase and she becomes a cart abandoner by the clock alone. She clicks the
//! reminder e-mail and buys in the app. She gets a coupon by e-mail and redeems it in a
//! store with her loyalty card, which links the card to her profile. In the end omnia
//! holds one profile with her activity on four channels.

use std::sync::Arc;

use omnia::clock::{Clock, ManualClock};
use omnia::config::Config;
use omnia::engine::RawEvent;
use omnia::node::Node;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// Monday 2 March 2026, 10:00 UTC.
const START: i64 = 1_772_445_600_000;

struct Journey {
    clock: Arc<ManualClock>,
    node: Node,
}

impl Journey {
    fn new() -> Journey {
        Journey::with(Config::embedded_default().expect("default config"))
    }

    /// The default config with a strict tracking plan (`unknown_properties = "reject"`).
    fn strict() -> Journey {
        let text = omnia::config::DEFAULT_CONFIG.replacen(
            "unknown_properties = \"ignore\"",
            "unknown_properties = \"reject\"",
            1,
        );
        Journey::with(
            Config::from_source(&omnia::config::Source::new("strict.toml", text)).unwrap(),
        )
    }

    fn with(config: Config) -> Journey {
        let clock = Arc::new(ManualClock::new(START - 7 * DAY));
        let engine = Node::new(config, clock.clone());
        Journey {
            clock,
            node: engine,
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn at(&self, event: &str, channel: &str) -> RawEvent {
        RawEvent::new(event, channel, self.now())
    }

    fn send(&self, event: RawEvent) -> omnia::engine::Applied {
        self.node.ingest(&event).unwrap_or_else(|e| panic!("{e}"))
    }

    fn wait_ms(&self, ms: i64) {
        self.clock.advance_ms(ms);
        self.node.tick();
    }

    fn segments_of(&self, key: &str) -> Vec<String> {
        self.node
            .profile(key)
            .map(|p| p.segments)
            .unwrap_or_default()
    }
}

/// `sum(w * 2^(-(now - t) / half_life))`: the engagement score computed from scratch.
fn engagement(events: &[(f64, i64)], now: i64) -> f64 {
    let half_life = 7.0 * 86_400.0;
    events
        .iter()
        .map(|(w, t)| w * (-((now - t) / 1000) as f64 / half_life).exp2())
        .sum()
}

#[test]
fn sofia_journey_across_web_app_email_and_store() {
    let j = Journey::new();
    let mut scored: Vec<(f64, i64)> = Vec::new();

    // A week earlier she created an account in the app.
    j.send(
        j.at("page_view", "app")
            .key("user:sofia")
            .prop("url", "/welcome"),
    );
    scored.push((1.0, j.now()));
    let account = j
        .node
        .engine()
        .customer_of("user:sofia")
        .expect("account profile");
    assert_eq!(j.segments_of("user:sofia"), vec!["new_visitors"]);

    // Today, an anonymous visitor arrives on the web from the flyer campaign.
    j.wait_ms(7 * DAY);
    let cookie = "anon:c-7f3";
    let visit = j.send(
        j.at("page_view", "web")
            .key(cookie)
            .prop("url", "/lp/spring?utm=flyer")
            .prop("campaign", "flyer-spring"),
    );
    scored.push((1.0, j.now()));
    assert!(visit.created, "an unknown cookie is a new profile");
    assert_ne!(visit.customer, account);
    assert!(j.node.engine().contains("new_visitors", cookie).unwrap());

    // She views shoes and puts them in the cart.
    j.wait_ms(2 * MINUTE);
    j.send(
        j.at("product_view", "web")
            .key(cookie)
            .prop("sku", "SHOE-42")
            .prop("category", "shoes")
            .prop("price", 120.0),
    );
    scored.push((2.0, j.now()));
    j.wait_ms(MINUTE);
    let carted_at = j.now();
    j.send(
        j.at("add_to_cart", "web")
            .key(cookie)
            .prop("sku", "SHOE-42")
            .prop("category", "shoes")
            .prop("price", 120.0)
            .prop("quantity", 1.0),
    );
    scored.push((5.0, j.now()));
    assert!(
        !j.node.engine().contains("cart_abandoners", cookie).unwrap(),
        "not an abandoner a minute after adding to the cart"
    );

    // Ten minutes later she logs in on the app: the cookie's profile merges into her account.
    j.wait_ms(10 * MINUTE);
    let login = j.send(
        j.at("identify", "app")
            .key("user:sofia")
            .key(cookie)
            .key("email:sofia@example.nl")
            .attr("country", "NL")
            .attr("email_opt_in", true),
    );
    assert_eq!(login.merged, 1);
    assert_eq!(
        login.customer, account,
        "the account profile survives the merge"
    );
    assert_eq!(j.node.engine().customer_of(cookie), Some(account));
    assert_eq!(j.node.stats().customers, 1, "one person, one profile");
    let profile = j.node.profile(cookie).expect("profile by cookie");
    assert_eq!(profile.primary_key, "user:sofia");
    assert_eq!(
        profile.keys,
        vec!["user:sofia", "email:sofia@example.nl", "anon:c-7f3"]
    );
    assert_eq!(profile.aggregate("count(product_view, 7d)"), Some(1.0));
    assert_eq!(
        profile.first_seen as i64,
        (START - 7 * DAY) / 1000,
        "first seen is the account's first event"
    );
    assert!(profile.in_segment("email_reachable"));
    assert!(
        profile.in_segment("multichannel_shoppers"),
        "web and app in 30 days"
    );
    // The merged-away profile left every bitmap: only one customer is counted anywhere.
    assert_eq!(j.node.segment_count("multichannel_shoppers").unwrap(), 1);
    assert_eq!(
        j.node
            .engine()
            .count(&j.node.engine().query("all").unwrap()),
        1
    );

    // 30 minutes after adding to the cart, with no purchase and no event, she is a
    // cart abandoner: the clock alone moved her.
    j.wait_ms(carted_at + 30 * MINUTE - j.now());
    assert!(
        !j.node
            .engine()
            .contains("cart_abandoners", "user:sofia")
            .unwrap(),
        "exactly 30 minutes is not more than 30 minutes"
    );
    j.wait_ms(1000);
    assert!(j
        .node
        .engine()
        .contains("cart_abandoners", "user:sofia")
        .unwrap());
    assert_eq!(j.node.segment_count("cart_abandoners").unwrap(), 1);

    // The reminder e-mail: she opens and clicks it, then buys in the app.
    j.wait_ms(3 * 60 * MINUTE);
    j.send(
        j.at("email_click", "email")
            .key("email:sofia@example.nl")
            .prop("campaign", "cart-reminder"),
    );
    scored.push((3.0, j.now()));
    assert!(j
        .node
        .engine()
        .contains("cart_abandoners", "user:sofia")
        .unwrap());
    j.wait_ms(5 * MINUTE);
    j.send(
        j.at("purchase", "app")
            .key("user:sofia")
            .prop("amount", 120.0)
            .prop("sku", "SHOE-42")
            .prop("category", "shoes")
            .prop("order_id", "o-1"),
    );
    scored.push((20.0, j.now()));
    let profile = j.node.profile("user:sofia").unwrap();
    assert!(
        !profile.in_segment("cart_abandoners"),
        "buying ends the abandonment"
    );
    assert!(
        !profile.in_segment("new_visitors"),
        "a buyer is no longer a new visitor"
    );
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(120.0));
    assert_eq!(j.node.segment_count("cart_abandoners").unwrap(), 0);

    // A coupon by e-mail, redeemed in a store with her loyalty card.
    j.wait_ms(DAY);
    j.send(
        j.at("coupon_issued", "email")
            .key("email:sofia@example.nl")
            .prop("coupon", "SPRING10")
            .prop("value", 10.0),
    );
    j.wait_ms(2 * DAY);
    let store = j.send(
        j.at("coupon_redeemed", "store")
            .key("card:8812")
            .key("email:sofia@example.nl")
            .prop("coupon", "SPRING10")
            .prop("value", 10.0)
            .prop("store", "amsterdam-kalverstraat"),
    );
    scored.push((10.0, j.now()));
    assert_eq!(
        (store.customer, store.merged, store.created),
        (account, 0, false),
        "the card links to her profile"
    );
    assert_eq!(j.node.engine().customer_of("card:8812"), Some(account));

    // One profile, four channels, one multichannel shopper.
    let profile = j.node.profile("card:8812").unwrap();
    let channels: Vec<&str> = profile.channels.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(channels, vec!["web", "app", "email", "store"]);
    assert_eq!(
        profile.keys,
        vec![
            "user:sofia",
            "email:sofia@example.nl",
            "card:8812",
            "anon:c-7f3"
        ]
    );
    assert!(profile.in_segment("multichannel_shoppers"));
    assert!(profile.in_segment("email_reachable"));
    assert!(!profile.in_segment("lapsed_customers"));
    let expected = engagement(&scored, j.now());
    let score = profile.score("engagement").unwrap();
    assert!(
        (score - expected).abs() < 1e-9,
        "engagement {score} != {expected}"
    );
    let propensity = profile.score("purchase_propensity").unwrap();
    assert!(propensity > 0.0 && propensity < 1.0);

    // A month of silence: the clock makes her a lapsed customer and ends her
    // multichannel activity, with no event.
    j.wait_ms(31 * DAY);
    let profile = j.node.profile("user:sofia").unwrap();
    assert!(profile.in_segment("lapsed_customers"));
    assert!(!profile.in_segment("multichannel_shoppers"));
    assert_eq!(j.node.segment_count("lapsed_customers").unwrap(), 1);
    assert!(
        profile.score("engagement").unwrap() < score / 8.0,
        "four half-lives later"
    );
}

#[test]
fn events_from_too_far_in_the_future_are_rejected_and_near_future_counts_as_now() {
    let j = Journey::new();
    let err = j
        .node
        .ingest(&RawEvent::new("page_view", "web", j.now() + 6 * MINUTE).key("anon:x"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("event `page_view` is 360000 ms in the future (timestamp {}); at most 300 s of clock skew is allowed (engine.max_future_skew)", j.now() + 6 * MINUTE)
    );
    assert_eq!(
        j.node.engine().customer_of("anon:x"),
        None,
        "a rejected event creates nothing"
    );
    j.send(RawEvent::new("page_view", "web", j.now() + 4 * MINUTE).key("anon:x"));
    let profile = j.node.profile("anon:x").unwrap();
    assert_eq!(profile.last_seen as i64, j.now() / 1000);
}

#[test]
fn unknown_names_are_rejected_with_what_and_where() {
    let j = Journey::strict();
    let cases = [
        (RawEvent::new("purchse", "web", j.now()).key("user:1"), "unknown event type `purchse`; declared event types: page_view, product_view"),
        (RawEvent::new("purchase", "fax", j.now()).key("user:1"), "unknown channel `fax` in event `purchase`; declared channels: web, app, email, sms, store, call_center"),
        (RawEvent::new("purchase", "web", j.now()), "event `purchase` has no identity key; send at least one key such as `user:123`"),
        (RawEvent::new("purchase", "web", j.now()).key("fax:1"), "bad identity key `fax:1` in event `purchase`: unknown namespace `fax`; declared namespaces: user, email, card, phone, anon"),
        (RawEvent::new("purchase", "web", j.now()).key("user1"), "bad identity key `user1` in event `purchase`: expected `namespace:value`, for example `user:123`"),
        (RawEvent::new("purchase", "web", j.now()).key("user:1").prop("amount", "ten"), "property `amount` of event `purchase` must be a number, found a string"),
        (RawEvent::new("purchase", "web", j.now()).key("user:1").prop("colour", "red"), "unknown property `colour` in event `purchase`; its properties are: amount, sku, category, order_id"),
        (RawEvent::new("identify", "web", j.now()).key("user:1").attr("shoe_size", 39.0), "unknown attribute `shoe_size` in event `identify`; declared attributes: country"),
    ];
    for (event, expected) in cases {
        let message = j.node.ingest(&event).unwrap_err().to_string();
        assert!(
            message.starts_with(expected),
            "{message}\n  does not start with\n{expected}"
        );
    }
    assert_eq!(j.node.stats().customers, 0);
}

#[test]
fn non_finite_numbers_are_rejected_with_their_own_message() {
    let j = Journey::new();
    let err = j
        .node
        .ingest(
            &RawEvent::new("purchase", "web", j.now())
                .key("user:1")
                .prop("amount", f64::NAN),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "property `amount` of event `purchase` must be a finite number, found a NaN or infinity"
    );
    let err = j
        .node
        .ingest(
            &RawEvent::new("identify", "web", j.now())
                .key("user:1")
                .attr("birth_year", f64::INFINITY),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "attribute `birth_year` in event `identify` must be a finite number, found a NaN or infinity");
}

#[test]
fn undeclared_properties_are_dropped_and_counted_as_drift() {
    // The default config takes what trackers send beyond the tracking plan, and says so.
    let j = Journey::new();
    j.send(
        RawEvent::new("purchase", "web", j.now())
            .key("user:1")
            .prop("amount", 30.0)
            .prop("colour", "red")
            .attr("shoe_size", 39.0),
    );
    j.send(
        RawEvent::new("purchase", "web", j.now())
            .key("user:1")
            .prop("colour", "blue"),
    );
    assert!(j
        .node
        .ingest(&RawEvent::new("Product Teleported", "web", j.now()).key("user:1"))
        .is_err());
    let profile = j.node.profile("user:1").unwrap();
    assert_eq!(profile.aggregate("sum(purchase.amount, 90d)"), Some(30.0));
    let drift = j.node.engine().drift();
    assert_eq!(
        drift.ignored(),
        [
            ("purchase".to_string(), "attr.shoe_size".to_string(), 1),
            ("purchase".to_string(), "colour".to_string(), 2),
        ]
    );
    assert_eq!(
        drift.unknown_events(),
        [("Product Teleported".to_string(), 1)]
    );
}

#[test]
fn a_message_id_is_applied_once_per_dedup_window() {
    let j = Journey::new();
    let order = || {
        RawEvent::new("purchase", "web", j.now())
            .key("user:1")
            .prop("amount", 10.0)
            .with_message_id("m-42")
    };
    assert!(!j.send(order()).duplicate);
    assert!(j.send(order()).duplicate, "a retry within the window");
    j.clock.advance_ms(DAY - 1000);
    assert!(j.send(order()).duplicate, "still within the 24 h window");
    let sum = |j: &Journey| {
        j.node
            .profile("user:1")
            .unwrap()
            .aggregate("sum(purchase.amount, 90d)")
    };
    assert_eq!(sum(&j), Some(10.0));
    // A day after it was applied the id is forgotten: the same id is a new event.
    j.clock.advance_ms(2000);
    j.node.tick();
    assert_eq!(j.node.engine().dedup().len(), 0, "the sweep forgot it");
    assert!(!j.send(order()).duplicate);
    assert_eq!(sum(&j), Some(20.0));
    // Events without an id are applied as always.
    j.send(
        RawEvent::new("purchase", "web", j.now())
            .key("user:1")
            .prop("amount", 1.0),
    );
    j.send(
        RawEvent::new("purchase", "web", j.now())
            .key("user:1")
            .prop("amount", 1.0),
    );
    assert_eq!(sum(&j), Some(22.0));
}
