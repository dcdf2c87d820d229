//! Triggers against a real server and a real HTTP receiver on loopback: Sofia's cart
//! reminder and thank-you, a delayed step cancelled by a purchase, retries with the
//! same delivery id, dead letters, and deliveries that survive a restart.

use std::sync::Arc;
use std::time::Duration;

use omnia::client::Client;
use omnia::clock::{Clock, ManualClock};
use omnia::config::{Config, Source};
use omnia::engine::RawEvent;
use omnia::model::decision::{FeedbackKind, FeedbackTarget};
use omnia::store::Store;

mod common;
use common::binary::{serve_binary, Process};
use common::receiver::Receiver;
use common::{unsynced_wal, TempDir, TestServer, START_MS};

/// The default config (its triggers are Sofia's: the cart reminder, the win-back, the
/// thank-you), delivering to `url`, with a second, delayed reminder and `extra`.
fn config(url: &str, extra: &str) -> Config {
    let text = config_text(url, extra);
    Config::from_source(&Source::new("triggers.toml", text)).unwrap_or_else(|e| panic!("{e}"))
}

fn config_text(url: &str, extra: &str) -> String {
    let default =
        omnia::config::DEFAULT_CONFIG.replace("http://127.0.0.1:8900/omnia/triggers", url);
    assert_ne!(
        default,
        omnia::config::DEFAULT_CONFIG,
        "the default config's webhooks moved"
    );
    format!(
        r#"{default}
[triggers.cart_reminder_again]
on = "enter cart_abandoners"
after = "1d"
channel = "email"
decide = true
webhook = {{ url = "{url}", headers = {{ Authorization = "Bearer mailer-secret" }} }}
{extra}"#
    )
}

/// One test's world on the default config's triggers and `cart_reminder_again`: a
/// receiver, a data directory, the clock at [`START_MS`], the store, the server with
/// its trigger runner, and a client.
struct Case {
    receiver: Receiver,
    dir: TempDir,
    clock: Arc<ManualClock>,
    store: Store,
    server: TestServer,
    client: Client,
}

impl Case {
    async fn start(name: &str, receiver: Receiver) -> Case {
        let dir = TempDir::new("triggers", name);
        let clock = Arc::new(ManualClock::new(START_MS));
        let (store, server) = open(&dir, &clock, config(&receiver.url(), "")).await;
        let client = Client::connect(&server.addr).await.unwrap();
        Case {
            receiver,
            dir,
            clock,
            store,
            server,
            client,
        }
    }
}

async fn open(dir: &TempDir, clock: &Arc<ManualClock>, config: Config) -> (Store, TestServer) {
    let store = Store::open(&dir.0, config, clock.clone(), unsynced_wal()).unwrap();
    let server = TestServer::on_store(&store, clock.clone()).await;
    (store, server)
}

async fn close(store: Store, server: TestServer) {
    server.shutdown().await;
    store.close().unwrap();
}

async fn ingest(client: &Client, event: RawEvent) {
    let ack = client.ingest(vec![event]).await.unwrap();
    assert_eq!(ack.accepted, 1, "{ack:?}");
}

/// Sofia's cart on the web, anonymous, then her login in the app.
async fn sofia_abandons_her_cart(client: &Client, clock: &ManualClock) {
    ingest(
        client,
        RawEvent::new("add_to_cart", "web", clock.now_ms())
            .key("anon:sofia-web")
            .prop("sku", "SHOE-38")
            .prop("price", 89.0),
    )
    .await;
    ingest(
        client,
        RawEvent::new("page_view", "app", clock.now_ms())
            .key("anon:sofia-web")
            .key("email:sofia@example.com")
            .attr("email_opt_in", true),
    )
    .await;
}

/// Sofia abandons her cart, half an hour passes, and the timers run: she is in
/// `cart_abandoners`.
async fn half_an_hour_after_her_cart(client: &Client, clock: &ManualClock) {
    sofia_abandons_her_cart(client, clock).await;
    clock.advance_secs(31 * 60);
    tick(client).await;
}

/// Runs the timers due now (a count locks every shard).
async fn tick(client: &Client) {
    client.segment_count("cart_abandoners").await.unwrap();
}

/// Waits (at most 10 s) until `done` says the runner got there.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counts(server: &TestServer, trigger: &str) -> omnia::server::triggers::TriggerCounts {
    let status = server.shared.triggers.as_ref().expect("a trigger runner");
    status.counts().get(trigger).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sofia_gets_one_cart_reminder_no_second_after_buying_and_a_thank_you_coupon() {
    let Case {
        receiver,
        dir: _dir,
        clock,
        store,
        server,
        client,
    } = Case::start("sofia", Receiver::start(0).await).await;

    half_an_hour_after_her_cart(&client, &clock).await;
    let reminder = receiver.wait_for(1).await.remove(0);
    assert_eq!(reminder.body["trigger"], "cart_reminder");
    assert_eq!(
        reminder.header("idempotency-key"),
        reminder.body["delivery_id"].as_str()
    );
    let keys = reminder.body["customer"]["keys"].as_array().unwrap();
    assert!(
        keys.iter().any(|k| k == "email:sofia@example.com"),
        "{keys:?}"
    );
    assert_eq!(
        reminder.body["customer"]["by_namespace"]["email"][0],
        "sofia@example.com"
    );
    let decision = &reminder.body["decision"];
    assert_eq!(
        decision["offers"][0]["offer"], "cart_reminder",
        "{decision}"
    );
    let coupon = decision["coupons"][0]["code"].as_str().unwrap();
    assert!(coupon.starts_with("CART10-"), "{coupon}");
    // The second step waits a day.
    assert_eq!(counts(&server, "cart_reminder_again").pending, 1);

    // She buys in the app before the day is up: the second step is cancelled...
    clock.advance_secs(3600);
    ingest(
        &client,
        RawEvent::new("purchase", "app", clock.now_ms())
            .key("email:sofia@example.com")
            .prop("amount", 89.0),
    )
    .await;
    until("the second reminder's cancellation", || {
        counts(&server, "cart_reminder_again").cancelled == 1
    })
    .await;
    // ... and her first purchase sends the thank-you, with a coupon of its own.
    let thanks = receiver.wait_for(2).await.remove(1);
    assert_eq!(thanks.body["trigger"], "thank_you");
    assert_eq!(thanks.body["decision"]["offers"][0]["offer"], "thank_you");
    let code = thanks.body["decision"]["offers"][0]["offer"].clone();
    assert_eq!(code, "thank_you");
    let coupons = thanks.body["decision"]["coupons"].as_array().unwrap();
    let thanks_coupon = coupons
        .iter()
        .find(|c| c["offer"] == "thank_you")
        .unwrap_or_else(|| panic!("{coupons:?}"));
    let thanks_code = thanks_coupon["code"].as_str().unwrap().to_string();
    assert!(thanks_code.starts_with("THANKS-"), "{thanks_code}");

    // The day passes: nothing more is sent.
    clock.advance_secs(2 * 86_400);
    tick(&client).await;
    let status = server.shared.triggers.clone().unwrap();
    let cursor_at_end = store.stream.archived();
    until("the runner to read every change", || {
        status.json()["cursor"].as_u64() >= Some(cursor_at_end)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2, "{:?}", receiver.received());

    // The store redeems the thank-you coupon: an accept by her e-mail key.
    let redeemed = client
        .feedback(
            FeedbackKind::Accept,
            FeedbackTarget::Customer {
                key: "email:sofia@example.com".into(),
                offer: "thank_you".into(),
                channel: "store".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(redeemed.coupon.map(|c| c.code), Some(thanks_code));

    assert_eq!(counts(&server, "cart_reminder").delivered, 1);
    assert_eq!(counts(&server, "thank_you").delivered, 1);
    // The stream recorded at least her entering the cart segment, her leaving it, and
    // her entering `customers`.
    let stats = client.stats_with(false, false, true).await.unwrap();
    let recorded = stats.triggers.unwrap()["changes_recorded"]
        .as_u64()
        .unwrap();
    assert!(recorded >= 3, "{recorded}");
    close(store, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_same_delivery_id_until_it_succeeds() {
    // Fails twice, then answers 200.
    let Case {
        receiver,
        dir: _dir,
        clock,
        store,
        server,
        client,
    } = Case::start("retry", Receiver::start(2).await).await;
    half_an_hour_after_her_cart(&client, &clock).await;
    receiver.wait_for(1).await;
    until("the first failure", || {
        counts(&server, "cart_reminder").failed == 1
    })
    .await;
    // The first retry waits the backoff (30 s by default), the second twice that.
    clock.advance_secs(29);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    clock.advance_secs(1);
    receiver.wait_for(2).await;
    until("the second failure", || {
        counts(&server, "cart_reminder").failed == 2
    })
    .await;
    clock.advance_secs(59);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2);
    clock.advance_secs(1);
    let all = receiver.wait_for(3).await;
    until("the delivery", || {
        counts(&server, "cart_reminder").delivered == 1
    })
    .await;
    let ids: Vec<_> = all.iter().map(|r| r.body["delivery_id"].clone()).collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
    let attempts: Vec<_> = all.iter().map(|r| r.header("omnia-attempt")).collect();
    assert_eq!(attempts, [Some("1"), Some("2"), Some("3")]);
    // One decision for the three: the same document each time.
    assert_eq!(all[0].body, all[2].body);
    close(store, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_keeps_failing_becomes_a_dead_letter() {
    let receiver = Receiver::start(u32::MAX).await;
    let dir = TempDir::new("triggers", "dead");
    let clock = Arc::new(ManualClock::new(START_MS));
    let extra = format!(
        "\n[triggers.only_once]\non = \"enter cart_abandoners\"\nchannel = \"email\"\nmax_attempts = 2\nbackoff = \"5s\"\nwebhook = {{ url = \"{}\" }}\n",
        receiver.url()
    );
    let (store, server) = open(&dir, &clock, config(&receiver.url(), &extra)).await;
    let client = Client::connect(&server.addr).await.unwrap();
    half_an_hour_after_her_cart(&client, &clock).await;
    until("a first failure", || {
        counts(&server, "only_once").failed == 1
    })
    .await;
    clock.advance_secs(5);
    until("the dead letter", || counts(&server, "only_once").dead == 1).await;
    // STATS says so, as `ctl stats --triggers` shows it.
    let stats = client.stats_with(false, false, true).await.unwrap();
    assert!(stats.drift.is_none());
    let status = stats.triggers.expect("a triggers section");
    assert_eq!(status["triggers"]["only_once"]["dead"], 1, "{status}");
    let dead = status["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["trigger"] == "only_once")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert_eq!(dead["attempts"], 2);
    assert!(
        dead["error"].as_str().unwrap().contains("HTTP 503"),
        "{dead}"
    );
    close(store, server).await;

    // The dead letter is still there after a restart.
    let clock = Arc::new(ManualClock::new(clock.now_ms()));
    let (store, server) = open(&dir, &clock, config(&receiver.url(), &extra)).await;
    let status = server.shared.triggers.clone().unwrap().json();
    assert!(
        status["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == dead["id"]),
        "{status}"
    );
    close(store, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_pending_at_a_stop_is_made_after_the_restart_once() {
    let Case {
        receiver,
        dir,
        clock,
        store,
        server,
        client,
    } = Case::start("restart", Receiver::start(0).await).await;
    half_an_hour_after_her_cart(&client, &clock).await;
    receiver.wait_for(1).await;
    until("the reminder's delivery and the second step", || {
        counts(&server, "cart_reminder").delivered == 1
            && counts(&server, "cart_reminder_again").pending == 1
    })
    .await;
    drop(client);
    close(store, server).await;

    // A day later, on a new server: the second step is due, and sent once.
    let clock = Arc::new(ManualClock::new(clock.now_ms() + 86_400_000));
    let (store, server) = open(&dir, &clock, config(&receiver.url(), "")).await;
    let client = Client::connect(&server.addr).await.unwrap();
    tick(&client).await;
    let all = receiver.wait_for(2).await;
    assert_eq!(all[1].body["trigger"], "cart_reminder_again");
    assert_eq!(all[1].header("authorization"), Some("Bearer mailer-secret"));
    until("the delivery", || {
        counts(&server, "cart_reminder_again").delivered == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2);
    close(store, server).await;
}

/// `omnia serve` on `data` with the config in `config`; its log beside the directory.
fn serve(data: &std::path::Path, config: &std::path::Path) -> (Process, String) {
    serve_binary(data, &["--config".as_ref(), config.as_os_str()])
}

/// The trigger counts the server at `addr` reports in STATS.
async fn counts_of(addr: &str, trigger: &str) -> serde_json::Value {
    let client = Client::connect(addr).await.unwrap();
    let stats = client.stats_with(false, false, true).await.unwrap();
    stats.triggers.unwrap()["triggers"][trigger].clone()
}

/// Waits (at most 10 s) until the server at `addr` reports `field` of `trigger` at `n`.
async fn until_counted(addr: &str, trigger: &str, field: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counts = counts_of(addr, trigger).await;
        if counts[field].as_u64() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {trigger}.{field} = {n}: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILL between a change and its delivery: after the restart the delivery is made,
/// with the same id; once delivered, a further crash and restart sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_interrupted_by_sigkill_is_made_after_the_restart_once() {
    // The first attempt fails, so the delivery is still open when the server dies.
    let receiver = Receiver::start(1).await;
    let dir = TempDir::new("triggers", "sigkill");
    std::fs::create_dir_all(&dir.0).unwrap();
    let data = dir.0.join("data");
    let file = dir.0.join("omnia.toml");
    // Kim has no e-mail opt-in, so only this trigger acts on her purchase.
    let extra = format!(
        "\n[triggers.receipt]\non = \"enter customers\"\nchannel = \"store\"\nbackoff = \"1s\"\nwebhook = {{ url = \"{}\" }}\n",
        receiver.url()
    );
    let text = config_text(&receiver.url(), &extra);
    std::fs::write(&file, text).unwrap();

    let (mut server, addr) = serve(&data, &file);
    let client = Client::connect(&addr).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    ingest(
        &client,
        RawEvent::new("purchase", "store", now)
            .key("email:kim@example.com")
            .prop("amount", 40.0),
    )
    .await;
    let first = receiver.wait_for(1).await.remove(0);
    server.kill().unwrap();
    server.wait().unwrap();

    let (mut server, addr) = serve(&data, &file);
    let all = receiver.wait_for(2).await;
    until_counted(&addr, "receipt", "delivered", 1).await;
    assert_eq!(all[1].body["delivery_id"], first.body["delivery_id"]);
    assert_eq!(
        all[1].body, first.body,
        "every attempt sends the same document"
    );
    server.kill().unwrap();
    server.wait().unwrap();

    // Delivered before the crash: nothing is sent again.
    let (_server, addr) = serve(&data, &file);
    let counts = counts_of(&addr, "receipt").await;
    assert_eq!(counts["pending"].as_u64().unwrap_or(0), 0, "{counts}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 2, "{:?}", receiver.received());
}

/// Quiet hours are the customer's: at 10:31 UTC it is 23:31 in Auckland, so the
/// reminder waits for 08:00 there, 19:00 UTC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_in_the_customers_quiet_hours_waits_for_their_end() {
    let Case {
        receiver,
        dir,
        clock,
        store,
        server,
        client,
    } = Case::start("quiet", Receiver::start(0).await).await;
    ingest(
        &client,
        RawEvent::new("add_to_cart", "app", clock.now_ms())
            .key("email:aroha@example.co.nz")
            .attr("email_opt_in", true)
            .attr("time_zone", "Pacific/Auckland"),
    )
    .await;
    clock.advance_secs(31 * 60);
    tick(&client).await;
    until("the reminder to be deferred", || {
        let log = std::fs::read_to_string(dir.0.join("triggers/deliveries.log")).unwrap();
        log.contains("\"record\":\"deferred\"")
    })
    .await;
    // 18:59 UTC: still quiet in Auckland.
    clock.set_ms(START_MS + 9 * 3_600_000 - 60_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());
    clock.set_ms(START_MS + 9 * 3_600_000);
    let reminder = receiver.wait_for(1).await.remove(0);
    assert_eq!(reminder.body["trigger"], "cart_reminder");
    assert_eq!(
        reminder.body["prepared_at"].as_i64(),
        Some(START_MS + 9 * 3_600_000)
    );
    close(store, server).await;
}

/// FORGET cancels a forgotten customer's deliveries, even one whose document is fixed
/// and failing, and the journal's file no longer names her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_customers_deliveries_are_cancelled_and_leave_the_journal() {
    let Case {
        receiver,
        dir,
        clock,
        store,
        server,
        client,
    } = Case::start("forget", Receiver::start(u32::MAX).await).await;
    half_an_hour_after_her_cart(&client, &clock).await;
    until("a failed attempt", || {
        counts(&server, "cart_reminder").failed == 1
    })
    .await;
    let journal = dir.0.join("triggers/deliveries.log");
    assert!(std::fs::read_to_string(&journal)
        .unwrap()
        .contains("sofia@example.com"));

    client.forget("email:sofia@example.com").await.unwrap();
    until("her deliveries' cancellation", || {
        counts(&server, "cart_reminder").cancelled == 1
            && counts(&server, "cart_reminder_again").cancelled == 1
    })
    .await;
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(!text.contains("sofia"), "{text}");
    // The retry that was due is not made.
    clock.advance_secs(3600);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    close(store, server).await;
}

/// An https webhook whose certificate chains to the CA the trigger names is delivered
/// to; one whose CA is not trusted is not (the attempt fails, naming the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_delivered_to_when_its_certificate_is_trusted() {
    let dir = TempDir::new("triggers", "https");
    let certificates = TempDir::new("triggers", "https-pki");
    let pki = common::pki::pki(&certificates.0);
    let tls = omnia::tls::server_config(&pki.server_cert, &pki.server_key, None).unwrap();
    let receiver = Receiver::start_tls(tls).await;
    let url = receiver.url();
    let extra = format!(
        "\n[triggers.trusted]\non = \"enter customers\"\nchannel = \"store\"\nwebhook = {{ url = \"{url}\", ca = \"{}\" }}\n\
         \n[triggers.untrusted]\non = \"enter customers\"\nchannel = \"store\"\nmax_attempts = 1\nwebhook = {{ url = \"{url}\" }}\n",
        pki.ca.display()
    );
    let clock = Arc::new(ManualClock::new(START_MS));
    let (store, server) = open(&dir, &clock, config(&url, &extra)).await;
    let client = Client::connect(&server.addr).await.unwrap();
    ingest(
        &client,
        RawEvent::new("purchase", "store", START_MS)
            .key("card:4711")
            .prop("amount", 12.0),
    )
    .await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].body["trigger"], "trusted");
    until("the untrusted one's dead letter", || {
        counts(&server, "untrusted").dead == 1
    })
    .await;
    let status = server.shared.triggers.clone().unwrap().json();
    let error = status["dead_letters"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(receiver.received().len(), 1);
    close(store, server).await;
}
