//! What tests compare between two engines, and the customer journeys they feed them:
//! everything a channel or a data team can see, as text.

use omnia::decide::DecideError;
use omnia::engine::RawEvent;
use omnia::model::decision::DecisionRequest;
use omnia::model::RawValue;
use omnia::node::Node;

/// Customer `i`'s journey step `step`: anonymous browsing on a cookie, a login that
/// merges the cookie into the account (their profiles usually live in different
/// shards), carts, purchases, opt-ins.
pub fn event(i: usize, step: usize, now: i64) -> RawEvent {
    let anon = format!("anon:c{i}");
    let user = format!("user:{i}");
    match step % 6 {
        0 | 1 => RawEvent::new("page_view", if i % 2 == 0 { "web" } else { "app" }, now).key(&anon),
        2 => super::login(i, "web", now),
        3 => RawEvent::new("add_to_cart", "app", now)
            .key(&user)
            .prop("sku", RawValue::Str(format!("sku-{}", i % 7)))
            .prop("price", 20.0 + i as f64),
        4 => RawEvent::new("purchase", "store", now)
            .key(&user)
            .prop("amount", 100.0 + (i * 37 % 500) as f64),
        _ => RawEvent::new("email_open", "email", now).key(&format!("email:c{i}@example.com")),
    }
}

pub fn decide(
    engine: &Node,
    key: &str,
    channel: &str,
    record: bool,
) -> Result<String, DecideError> {
    let request = DecisionRequest {
        key: key.into(),
        channel: channel.into(),
        top: 3,
        record_impression: record,
        explain: true,
        context: Vec::new(),
    };
    let d = engine.decide(&request)?;
    Ok(format!(
        "{:?} {:?} {:?}",
        d.offers
            .iter()
            .map(|o| (&o.offer, o.sticky))
            .collect::<Vec<_>>(),
        // Codes come from the data directory's key (a fresh engine makes its own) and
        // from the format that issued them; what they are issued for must agree.
        d.coupons
            .iter()
            .map(|c| (&c.offer, c.code.split('-').next(), c.issued, c.expires))
            .collect::<Vec<_>>(),
        d.explanation
            .iter()
            .map(|c| (&c.offer, c.outcome.name(), &c.detail))
            .collect::<Vec<_>>()
    ))
}

/// What a channel or a data team can see of customers `0..n`: profiles (without the
/// internal id, which depends on the order profiles were created in), decisions with
/// explanations on two channels, segment sizes, offer counters.
pub fn observe(engine: &Node, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for i in 0..n {
        for key in [format!("user:{i}"), format!("anon:c{i}")] {
            let profile = engine.profile(&key).map(|mut p| {
                p.customer = 0;
                p.keys.sort();
                p
            });
            seen.push(format!("{key}: {profile:?}"));
            for channel in ["email", "web"] {
                seen.push(format!(
                    "{key} {channel}: {:?}",
                    decide(engine, &key, channel, false)
                ));
            }
        }
    }
    for segment in &engine.config().segments {
        seen.push(format!(
            "{}: {}",
            segment.name,
            engine.segment_count(&segment.name).unwrap()
        ));
    }
    seen.push(format!("{:?}", engine.stats().customers));
    seen
}

pub fn compare(a: &[String], b: &[String]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y);
    }
}
