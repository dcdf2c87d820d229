//! Several threads ingesting at once end in the same state as one thread replaying
//! the same events.
//!
//! The stream has links and merges (anonymous cookies logging in, e-mail addresses and
//! loyalty cards joining), several customers per shard, and events spread over the
//! past month so windows hold several buckets. Threads take interleaved slices, so the
//! order in which events and merges happen differs from the replay; what must not
//! differ is who is who, every aggregate, every attribute, every segment membership and
//! count. Decayed scores are compared with a tolerance: floating-point addition in a
//! different order may differ in the last bits.

use std::sync::Arc;

use omnia::clock::ManualClock;
use omnia::config::Config;
use omnia::engine::RawEvent;
use omnia::node::Node;

const NOW_MS: i64 = 1_772_445_600_000;

/// A deterministic stream (xorshift), so a failure is reproducible.
fn stream(people: u64, events: usize) -> Vec<RawEvent> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let kinds = [
        "page_view",
        "product_view",
        "add_to_cart",
        "purchase",
        "email_click",
        "store_visit",
        "identify",
        "subscribe",
        "unsubscribe",
    ];
    let channels = ["web", "app", "email", "store", "sms"];
    (0..events)
        .map(|_| {
            let person = next(people);
            let ts = NOW_MS - next(30 * 86_400) as i64 * 1000;
            let kind = kinds[next(kinds.len() as u64) as usize];
            let mut event = RawEvent::new(kind, channels[next(5) as usize], ts);
            // Each person has an account, a cookie per device, an e-mail address and a card.
            let keys = [
                format!("user:{person}"),
                format!("anon:{person}-{}", next(3)),
                format!("email:p{person}@example.com"),
                format!("card:{person}"),
            ];
            event = event.key(&keys[next(4) as usize]);
            if next(5) == 0 {
                event = event.key(&keys[next(4) as usize]);
            }
            match kind {
                "purchase" => {
                    event = event
                        .prop("amount", (10 + next(300)) as f64)
                        .prop("category", "shoes")
                }
                "identify" => {
                    // The value is a function of the timestamp: "newest wins" has no ties to break.
                    let countries = ["NL", "BE", "DE", "FR"];
                    event = event
                        .attr("country", countries[(ts / 1000 % 4) as usize])
                        .attr("email_opt_in", ts / 1000 % 3 != 0)
                }
                _ => {}
            }
            event
        })
        .collect()
}

fn engine() -> Node {
    Node::new(
        Config::embedded_default().expect("default config"),
        Arc::new(ManualClock::new(NOW_MS)),
    )
}

#[test]
fn concurrent_ingest_equals_a_single_threaded_replay() {
    let people = 400;
    let events = stream(people, 40_000);

    let replay = engine();
    for event in &events {
        replay.ingest(event).unwrap_or_else(|e| panic!("{e}"));
    }

    let concurrent = engine();
    let threads = 4;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (engine, events) = (&concurrent, &events);
            scope.spawn(move || {
                for event in events.iter().skip(t).step_by(threads) {
                    engine.ingest(event).unwrap_or_else(|e| panic!("{e}"));
                }
            });
        }
    });

    let (a, b) = (replay.stats(), concurrent.stats());
    assert_eq!(
        (a.customers, a.keys, a.events_applied),
        (b.customers, b.keys, b.events_applied)
    );
    assert!(a.merges > 0, "the stream must exercise merges");
    for segment in &replay.config().segments {
        assert_eq!(
            replay.segment_count(&segment.name).unwrap(),
            concurrent.segment_count(&segment.name).unwrap(),
            "count of {}",
            segment.name
        );
    }
    for person in 0..people {
        for key in [
            format!("user:{person}"),
            format!("card:{person}"),
            format!("anon:{person}-1"),
        ] {
            let (Some(mut x), Some(mut y)) = (replay.profile(&key), concurrent.profile(&key))
            else {
                assert_eq!(
                    replay.engine().customer_of(&key).is_some(),
                    concurrent.engine().customer_of(&key).is_some(),
                    "{key} known in one engine only"
                );
                continue;
            };
            x.keys.sort();
            y.keys.sort();
            assert_eq!(x.keys, y.keys, "who is who, for {key}");
            assert_eq!(
                (x.first_seen, x.last_seen, &x.channels),
                (y.first_seen, y.last_seen, &y.channels),
                "{key}"
            );
            assert_eq!(x.aggregates, y.aggregates, "{key}");
            assert_eq!(x.attributes, y.attributes, "{key}");
            assert_eq!(x.segments, y.segments, "{key}");
            for ((name, s), (_, t)) in x.scores.iter().zip(&y.scores) {
                assert!(
                    (s - t).abs() <= 1e-9 * s.abs().max(1.0),
                    "score {name} of {key}: {s} vs {t}"
                );
            }
        }
    }
}
