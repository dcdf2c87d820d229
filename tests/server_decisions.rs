//! Decisions over TCP: the Sofia journey's offers through the real server and client,
//! and sixteen concurrent clients racing for the last units of a budget.

mod common;

use common::{TestServer, START_MS};
use omnia::client::{Client, ClientError};
use omnia::config::{Config, Source};
use omnia::engine::RawEvent;
use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget, Outcome};
use omnia::protocol::ErrorCode;

const MINUTE: i64 = 60_000;

fn ask(key: &str, channel: &str, record: bool) -> DecisionRequest {
    DecisionRequest {
        key: key.into(),
        channel: channel.into(),
        top: 2,
        record_impression: record,
        explain: false,
        context: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sofia_gets_one_offer_on_every_channel_until_she_accepts_it_in_the_store() {
    let server = TestServer::start().await;
    let client = Client::connect(&server.addr).await.unwrap();
    let week_ago = START_MS - 7 * 24 * 60 * MINUTE;
    let mut account = RawEvent::new("identify", "app", week_ago)
        .key("user:sofia")
        .key("email:sofia@example.com");
    account
        .attributes
        .push(("email_opt_in".into(), omnia::model::RawValue::Bool(true)));
    let cart = RawEvent::new("add_to_cart", "web", START_MS).key("anon:c-7f3");
    let login = RawEvent::new("page_view", "app", START_MS + MINUTE)
        .key("anon:c-7f3")
        .key("user:sofia");
    let ack = client.ingest(vec![account, cart, login]).await.unwrap();
    assert_eq!(ack.accepted, 3, "{:?}", ack.rejected);
    server.clock.advance_ms(31 * MINUTE);

    // The e-mail backend asks, sends the reminder and records the impression at once.
    let email = client
        .decide(ask("email:sofia@example.com", "email", true))
        .await
        .unwrap();
    assert_eq!(email.offers[0].offer, "cart_reminder");
    let coupon = email.coupons[0].clone();

    // The app and the web show the same offer first while it is sticky, and her coupon.
    server.clock.advance_ms(2 * 60 * MINUTE);
    for channel in ["app", "web"] {
        let d = client
            .decide(ask("user:sofia", channel, false))
            .await
            .unwrap();
        assert_eq!(d.offers[0].offer, "cart_reminder", "{channel}");
        assert!(d.offers[0].sticky);
        assert_eq!(d.coupons, vec![coupon.clone()]);
        assert_eq!(d.arms, email.arms, "one arm on every channel");
    }
    // The app reports a click on that decision by its id.
    let click = client
        .feedback(
            FeedbackKind::Click,
            FeedbackTarget::Decision {
                decision_id: email.decision_id,
                offer: "cart_reminder".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(click.decision_id, email.decision_id);

    // The store's till accepts it with her coupon.
    let accepted = client
        .feedback(
            FeedbackKind::Accept,
            FeedbackTarget::Customer {
                key: "user:sofia".into(),
                offer: "cart_reminder".into(),
                channel: "store".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(accepted.coupon.map(|c| c.code), Some(coupon.code));
    for channel in ["email", "sms", "app", "web", "store"] {
        let mut request = ask("user:sofia", channel, false);
        request.explain = true;
        let d = client.decide(request).await.unwrap();
        assert!(
            d.offers.iter().all(|o| o.offer != "cart_reminder"),
            "{channel}"
        );
        let why = d.explanation.iter().find(|c| c.offer == "cart_reminder");
        assert!(
            why.is_some_and(|c| matches!(c.outcome, Outcome::Accepted | Outcome::Channel)),
            "{channel}: {why:?}"
        );
    }
    let stats = client.stats_with_offers().await.unwrap();
    let totals = |channel: &str| {
        stats
            .offers
            .iter()
            .find(|o| o.offer == "cart_reminder" && o.channel == channel && o.experiment.is_none())
            .cloned()
    };
    let email_row = totals("email").expect("email row");
    assert_eq!(
        (email_row.decisions, email_row.impressions, email_row.clicks),
        (1, 1, 1)
    );
    assert_eq!(totals("store").map(|r| r.accepts), Some(1));
    server.shutdown().await;
}

const RACE_CONFIG: &str = r#"
channels = ["web", "app"]
[identity]
namespaces = ["user"]
[events.view]
[events.offer_accept]
[events.offer_impression]
[decisions]
feedback_events = { accept = "offer_accept", impression = "offer_impression" }
[offers.last_units]
value = 1
budget = { accepts = 10 }
[offers.few_shown]
value = 2
channels = ["app"]
budget = { impressions = 25 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_racing_never_overspend_a_budget() {
    let config = Config::from_source(&Source::new("race.toml", RACE_CONFIG)).unwrap();
    let server = TestServer::with_config(config).await;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let addr = server.addr.clone();
            tokio::spawn(async move {
                let client = Client::connect(&addr).await.unwrap();
                let (mut accepted, mut refused, mut shown) = (0, 0, 0);
                for i in 0..8 {
                    let key = format!("user:{t}-{i}");
                    let d = client.decide(ask(&key, "app", true)).await.unwrap();
                    shown += d.offers.iter().filter(|o| o.offer == "few_shown").count();
                    let result = client
                        .feedback(
                            FeedbackKind::Accept,
                            FeedbackTarget::Customer {
                                key,
                                offer: "last_units".into(),
                                channel: "web".into(),
                            },
                        )
                        .await;
                    match result {
                        Ok(_) => accepted += 1,
                        Err(ClientError::Server {
                            code: Some(ErrorCode::BudgetSpent),
                            message,
                            ..
                        }) => {
                            assert!(message.contains("10 accepts"), "{message}");
                            refused += 1
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                (accepted, refused, shown)
            })
        })
        .collect();
    let (mut accepted, mut refused, mut shown) = (0, 0, 0);
    for task in tasks {
        let (a, r, s) = task.await.unwrap();
        accepted += a;
        refused += r;
        shown += s;
    }
    assert_eq!(accepted, 10, "exactly the accept budget");
    assert_eq!(refused, 16 * 8 - 10);
    assert_eq!(shown, 25, "exactly the impression budget");
    server.shutdown().await;
}
