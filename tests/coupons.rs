//! Coupons by code: issued with a decision, redeemed once at the till over TCP and HTTP,
//! refused with what and why, raced by sixteen tills; kept across restarts (log and
//! snapshot) and a merge, and forgotten with their holder.

mod common;

use std::sync::Arc;

use common::{unsynced_wal, TempDir, TestServer, START_MS};
use omnia::client::{Client, ClientError};
use omnia::clock::ManualClock;
use omnia::config::Config;
use omnia::decide::code;
use omnia::engine::RawEvent;
use omnia::model::decision::{Coupon, DecisionRequest};
use omnia::model::RawValue;
use omnia::node::Node;
use omnia::protocol::ErrorCode;
use omnia::store::Store;

const DAY_MS: i64 = 86_400_000;

fn ask(key: &str, channel: &str) -> DecisionRequest {
    common::ask(key, channel, 3, true)
}

/// A first purchase by `key` on the web at `now`: the default config's `thank_you`
/// offer (e-mail, with a THANKS coupon) becomes eligible.
fn purchase(key: &str, now: i64) -> RawEvent {
    RawEvent::new("purchase", "web", now)
        .key(key)
        .prop("amount", RawValue::Num(80.0))
}

/// The THANKS coupon of a decision's open coupons.
fn thanks(coupons: &[Coupon]) -> Coupon {
    coupons
        .iter()
        .find(|c| c.offer == "thank_you")
        .cloned()
        .unwrap_or_else(|| panic!("no thank_you coupon in {coupons:?}"))
}

/// The protocol error code and message of a refused request.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server {
            code: Some(code),
            message,
            ..
        }) => (code, message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_sent_by_email_is_redeemed_once_at_the_till_and_then_shown_nowhere() {
    let server = TestServer::start().await;
    let client = Client::connect(&server.addr).await.unwrap();
    let sofia = RawEvent::new("identify", "app", START_MS)
        .key("user:sofia")
        .key("email:sofia@example.com");
    let ack = client
        .ingest(vec![sofia, purchase("user:sofia", START_MS)])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 2, "{:?}", ack.rejected);

    // The thank-you e-mail is decided and sent with a code made for her.
    let email = client
        .decide(ask("email:sofia@example.com", "email"))
        .await
        .unwrap();
    let coupon = thanks(&email.coupons);
    let body = code::parse(&coupon.code).unwrap();
    assert_eq!((body.prefix, body.length), ("THANKS", 10));
    // The default config's thank-you e-mail names the code in its words.
    let words = email
        .offers
        .iter()
        .find(|o| o.offer == "thank_you")
        .and_then(|o| o.content.clone())
        .and_then(|c| c.text)
        .unwrap();
    assert!(words.contains(&coupon.code), "{words}");

    // Scanned on a channel the coupon is not valid on, mistyped, or unknown: refused,
    // saying why, and nothing is redeemed.
    let (code, message) = refused(client.redeem(&coupon.code, "email", None).await);
    assert_eq!(code, ErrorCode::CouponWrongChannel);
    assert!(message.contains("valid on web, app, store"), "{message}");
    let mut swapped: Vec<char> = coupon.code.chars().collect();
    let n = swapped.len();
    let i = (7..n - 1).find(|&i| swapped[i] != swapped[i + 1]).unwrap();
    swapped.swap(i, i + 1);
    let swapped: String = swapped.into_iter().collect();
    let (code, message) = refused(client.redeem(&swapped, "store", None).await);
    assert_eq!(code, ErrorCode::CouponMistyped, "{message}");
    assert!(message.contains("mistyped"), "{message}");
    let (code, message) = refused(client.redeem("THANKS-0I", "store", None).await);
    assert_eq!(code, ErrorCode::CouponMistyped);
    assert!(message.contains("has `I` at character 2"), "{message}");
    let gift = code::format("GIFT", 10, 99);
    let (code, message) = refused(client.redeem(&gift, "store", None).await);
    assert_eq!(code, ErrorCode::UnknownCoupon);
    assert!(message.contains("CART10, THANKS, WELCOME"), "{message}");
    let never = code::format("THANKS", 10, 12_345);
    let (code, _) = refused(client.redeem(&never, "store", None).await);
    assert_eq!(code, ErrorCode::UnknownCoupon);

    // At the till, typed in small letters: redeemed, as an accept of the offer, with
    // the order in her profile.
    server.clock.advance_ms(2 * DAY_MS);
    let engagement = |server: &TestServer| {
        server
            .node
            .profile("user:sofia")
            .unwrap()
            .scores
            .iter()
            .find(|(name, _)| name == "engagement")
            .map(|(_, v)| *v)
            .unwrap()
    };
    let before = engagement(&server);
    let redeemed = client
        .redeem(&coupon.code.to_lowercase(), "store", Some(59.9))
        .await
        .unwrap();
    assert_eq!(redeemed.offer, "thank_you");
    assert_eq!(redeemed.code, coupon.code);
    assert_eq!(redeemed.key, "user:sofia");
    assert_eq!(redeemed.channel, "store");
    assert_eq!(redeemed.redeemed_at as i64, (START_MS + 2 * DAY_MS) / 1000);
    // `coupon_redeemed` weighs 10 in the engagement score.
    assert!(
        engagement(&server) > before + 9.0,
        "{} then {before}",
        engagement(&server)
    );
    let accepts: u64 = server
        .node
        .offer_stats()
        .iter()
        .filter(|o| o.offer == "thank_you" && o.channel == "store" && o.experiment.is_none())
        .map(|o| o.accepts)
        .sum();
    assert_eq!(accepts, 1);

    // No channel shows it any more; a second scan says when and where it was used.
    for (key, channel) in [
        ("email:sofia@example.com", "email"),
        ("user:sofia", "store"),
    ] {
        let d = client.decide(ask(key, channel)).await.unwrap();
        assert!(
            d.coupons.iter().all(|c| c.code != coupon.code),
            "{channel}: {:?}",
            d.coupons
        );
    }
    let (code, message) = refused(client.redeem(&coupon.code, "web", None).await);
    assert_eq!(code, ErrorCode::CouponAlreadyRedeemed);
    assert!(
        message.contains(&format!(
            "already redeemed at {} (Unix seconds) on channel `store`",
            redeemed.redeemed_at
        )),
        "{message}"
    );

    // Thirty days after its issue the next one is expired, and says so.
    let other = RawEvent::new("identify", "app", START_MS + 2 * DAY_MS).key("user:ana");
    client
        .ingest(vec![other, purchase("user:ana", START_MS + 2 * DAY_MS)])
        .await
        .unwrap();
    let ana = thanks(
        &client
            .decide(ask("user:ana", "email"))
            .await
            .unwrap()
            .coupons,
    );
    assert_ne!(ana.code, coupon.code);
    server.clock.advance_ms(31 * DAY_MS);
    let (code, message) = refused(client.redeem(&ana.code, "store", None).await);
    assert_eq!(code, ErrorCode::CouponExpired);
    assert!(
        message.contains(&format!("expired at {}", ana.expires)),
        "{message}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tills_scanning_one_code_at_once_redeem_it_once() {
    let server = TestServer::start().await;
    let client = Client::connect(&server.addr).await.unwrap();
    client
        .ingest(vec![purchase("user:1", START_MS)])
        .await
        .unwrap();
    let coupon = thanks(&client.decide(ask("user:1", "email")).await.unwrap().coupons);
    let mut tills = Vec::new();
    for _ in 0..16 {
        tills.push(Client::connect(&server.addr).await.unwrap());
    }
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let scans: Vec<_> = tills
        .into_iter()
        .map(|till| {
            let (start, code) = (start.clone(), coupon.code.clone());
            tokio::spawn(async move {
                start.wait().await;
                till.redeem(&code, "store", None).await
            })
        })
        .collect();
    let mut redeemed = 0;
    for scan in scans {
        match scan.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.code, coupon.code);
                redeemed += 1;
            }
            other => assert_eq!(refused(other).0, ErrorCode::CouponAlreadyRedeemed),
        }
    }
    assert_eq!(redeemed, 1, "exactly one till redeems the code");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_is_redeemed_over_http_with_the_status_that_says_why_not() {
    let server = TestServer::with_http().await;
    let http = server.http.clone().unwrap();
    server.node.ingest(&purchase("user:1", START_MS)).unwrap();
    let coupon = thanks(&server.node.decide(&ask("user:1", "email")).unwrap().coupons);
    let web = common::http_client();
    let redeem = |code: &str, body: serde_json::Value| {
        web.post(format!("{http}/v1/coupons/{code}/redeem"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let ok = redeem(
        &coupon.code,
        serde_json::json!({ "channel": "web", "order_value": 42.5 }),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    let ok: serde_json::Value = serde_json::from_str(&ok.text().await.unwrap()).unwrap();
    assert_eq!(ok["offer"], "thank_you");
    assert_eq!(ok["channel"], "web");
    assert!(ok["decision_id"].is_string());
    let again = redeem(&coupon.code, serde_json::json!({ "channel": "store" }))
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let again: serde_json::Value = serde_json::from_str(&again.text().await.unwrap()).unwrap();
    assert_eq!(again["code"], "COUPON_ALREADY_REDEEMED", "{again}");
    assert!(again["message"]
        .as_str()
        .unwrap()
        .ends_with("on channel `web`"));
    let never = code::format("THANKS", 10, 12_345);
    let unknown = redeem(&never, serde_json::json!({ "channel": "store" }))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let mistyped = redeem("THANKS-0", serde_json::json!({ "channel": "store" }))
        .await
        .unwrap();
    assert_eq!(mistyped.status(), 400);
    let bad = redeem(&coupon.code, serde_json::json!({ "till": 4 }))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    server.shutdown().await;
}

#[test]
fn a_coupon_survives_restarts_and_a_merge_and_is_forgotten_with_its_holder() {
    let dir = TempDir::new("coupons", "restart");
    let data = dir.0.join("data");
    let open = |now: i64| {
        let clock = Arc::new(ManualClock::new(now));
        let store = Store::open(
            &data,
            Config::embedded_default().unwrap(),
            clock.clone(),
            unsynced_wal(),
        )
        .unwrap();
        (store, clock)
    };
    // Issued to a cookie; the server stops before any snapshot.
    let (store, _) = open(START_MS);
    store.node.ingest(&purchase("anon:c-1", START_MS)).unwrap();
    let first = thanks(
        &store
            .node
            .decide(&ask("anon:c-1", "email"))
            .unwrap()
            .coupons,
    );
    store.close().unwrap();

    // From the log: the same code, still open; the cookie logs in, merging into the
    // account, and the code is redeemed from the account's profile.
    let (store, clock) = open(START_MS + 60_000);
    let d = store.node.decide(&ask("anon:c-1", "email")).unwrap();
    assert!(d.coupons.contains(&first), "{:?}", d.coupons);
    let login = RawEvent::new("page_view", "web", START_MS + 60_000)
        .key("anon:c-1")
        .key("user:7");
    store.node.ingest(&login).unwrap();
    let r = store.node.redeem(&first.code, "store", None).unwrap();
    assert_eq!(r.offer, "thank_you");
    // A code made after the restart is another one: the sequence went on.
    store
        .node
        .ingest(&purchase("user:8", START_MS + 60_000))
        .unwrap();
    let second = thanks(&store.node.decide(&ask("user:8", "email")).unwrap().coupons);
    assert_ne!(second.code, first.code);
    clock.advance_ms(1000);
    omnia::store::snapshot::write(&store.data, &store.node).unwrap();
    store.close().unwrap();

    // From the snapshot: the redemption with its time and channel, the second coupon
    // open; then the holder is forgotten, and so is its code.
    let (store, _) = open(START_MS + 120_000);
    assert!(store.recovered.snapshot.is_some(), "{}", store.recovered);
    let again = store.node.redeem(&first.code, "store", None).unwrap_err();
    assert!(
        again.to_string().contains(&format!(
            "already redeemed at {} (Unix seconds) on channel `store`",
            r.redeemed_at
        )),
        "{again}"
    );
    store
        .node
        .forget_with("user:8", &mut omnia::engine::Receipt::default())
        .unwrap();
    let gone = store.node.redeem(&second.code, "store", None).unwrap_err();
    assert!(gone.to_string().starts_with("no coupon has code"), "{gone}");
    store.close().unwrap();
}

#[test]
fn codes_from_two_engines_with_their_own_keys_differ() {
    let node = |seed: i64| {
        let node = Node::new(
            Config::embedded_default().unwrap(),
            Arc::new(ManualClock::new(START_MS + seed)),
        );
        node.ingest(&purchase("user:1", START_MS)).unwrap();
        thanks(&node.decide(&ask("user:1", "email")).unwrap().coupons).code
    };
    assert_ne!(
        node(0),
        node(0),
        "each engine without a data directory has its own key"
    );
}

#[test]
fn a_reload_keeps_every_code_its_redemption_and_the_sequence() {
    let dir = TempDir::new("coupons", "reload");
    let data = omnia::store::open_data_dir(&dir.0).unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let old = Node::new(Config::embedded_default().unwrap(), clock.clone());
    for key in ["user:1", "user:2"] {
        old.ingest(&purchase(key, START_MS)).unwrap();
    }
    let one = thanks(&old.decide(&ask("user:1", "email")).unwrap().coupons);
    let two = thanks(&old.decide(&ask("user:2", "email")).unwrap().coupons);
    old.redeem(&one.code, "store", None).unwrap();
    // A changed config: the segments move, the offers keep their names.
    let text = omnia::config::DEFAULT_CONFIG.replace(
        "sum(purchase.amount, 90d) > 500",
        "sum(purchase.amount, 90d) > 200",
    );
    let config = Config::from_source(&omnia::config::Source::new("new.toml", text)).unwrap();
    let prepared = omnia::store::reload::prepare(&data, &old, config, &|_| {}).unwrap();
    let new = prepared.finish(&data, &old).unwrap().0;
    let again = new.redeem(&one.code, "web", None).unwrap_err();
    assert!(again.to_string().contains("on channel `store`"), "{again}");
    assert_eq!(new.redeem(&two.code, "web", None).unwrap().key, "user:2");
    new.ingest(&purchase("user:3", START_MS)).unwrap();
    let three = thanks(&new.decide(&ask("user:3", "email")).unwrap().coupons);
    assert!(![&one.code, &two.code].contains(&&three.code));
}
