//! Forgetting a customer, end to end: FORGET over the binary protocol and
//! `DELETE /v1/profiles/{key}` over HTTP remove the whole merged customer by any of its
//! keys, lower the segment counts, refuse later events with its keys (SUPPRESSED), and
//! stay so across SIGKILL, restart and snapshot.

mod common;

use common::binary::{serve_on, sigterm, wait_ready};
use common::{TempDir, TestServer, START_MS};
use omnia::client::Client;
use omnia::model::RawEvent;

/// Sofia's journey: a cookie, an account with her e-mail (opted in), a card in the
/// store; and another customer who must stay.
fn sofia(now: i64) -> Vec<RawEvent> {
    vec![
        RawEvent::new("page_view", "web", now).key("anon:c-7f3"),
        RawEvent::new("identify", "app", now)
            .key("anon:c-7f3")
            .key("user:sofia")
            .key("email:sofia@example.nl")
            .attr("country", "NL")
            .attr("email_opt_in", true),
        RawEvent::new("purchase", "store", now)
            .key("card:8812")
            .key("user:sofia")
            .prop("amount", 120.0),
        RawEvent::new("identify", "app", now)
            .key("user:noor")
            .key("email:noor@example.nl")
            .attr("email_opt_in", true),
    ]
}

const SOFIA: [&str; 4] = [
    "anon:c-7f3",
    "user:sofia",
    "email:sofia@example.nl",
    "card:8812",
];

/// Now, for the real server, which runs on the wall clock.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `omnia serve` on `dir`, ready, with Sofia's journey (and Noor) ingested.
async fn serve_sofia(dir: &TempDir) -> (common::binary::Served, Client) {
    let served = serve_on(dir.0.clone());
    wait_ready(&served.http).await;
    let client = Client::connect(&served.addr).await.unwrap();
    assert_eq!(client.ingest(sofia(now())).await.unwrap().accepted, 4);
    (served, client)
}

#[tokio::test]
async fn a_forgotten_customer_is_gone_by_every_key_and_stays_suppressed() {
    let server = TestServer::with_http().await;
    let client = Client::connect(&server.addr).await.unwrap();
    assert_eq!(client.ingest(sofia(START_MS)).await.unwrap().accepted, 4);
    let reachable = client.segment_count("email_reachable").await.unwrap();
    assert_eq!(reachable, 2);

    // Forgotten by the card the store knows her by: every key goes.
    let (erasure, keys) = client.forget("card:8812").await.unwrap();
    assert_eq!(keys, 4);
    assert_eq!(erasure, 0, "no log in this server: the erasure id is 0");
    for key in SOFIA {
        assert!(client.profile(key).await.unwrap().is_none(), "{key}");
    }
    assert_eq!(client.segment_count("email_reachable").await.unwrap(), 1);
    assert!(client.profile("user:noor").await.unwrap().is_some());
    // Forgetting again: UNKNOWN_CUSTOMER, with the key named.
    let again = client.forget("user:sofia").await.unwrap_err();
    assert_eq!(
        again.code(),
        Some(omnia::protocol::ErrorCode::UnknownCustomer)
    );

    // Her keys are refused from now on, alone or beside a known one; the rest applies.
    let ack = client
        .ingest(vec![
            RawEvent::new("page_view", "web", START_MS).key("email:sofia@example.nl"),
            RawEvent::new("page_view", "web", START_MS)
                .key("user:noor")
                .key("card:8812"),
            RawEvent::new("page_view", "web", START_MS).key("user:noor"),
        ])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1);
    let codes: Vec<u16> = ack.rejected.iter().map(|r| r.code).collect();
    assert_eq!(codes, [34, 34], "{ack:?}");
    assert!(
        ack.rejected[0].message.contains("forgotten customer"),
        "{ack:?}"
    );
    for key in SOFIA {
        assert!(client.profile(key).await.unwrap().is_none(), "{key}");
    }

    // Over HTTP: DELETE /v1/profiles/{key}.
    let http = server.http.clone().unwrap();
    let response = common::http_client()
        .delete(format!("{http}/v1/profiles/email:noor@example.nl"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["keys"], 2, "{body}");
    let response = common::http_client()
        .delete(format!("{http}/v1/profiles/user:noor"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(client.stats().await.unwrap().customers, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_forget_survives_sigkill_restart_and_snapshot() {
    let dir = TempDir::new("privacy", "kill");
    let (mut served, client) = serve_sofia(&dir).await;
    let (erasure, keys) = client.forget("anon:c-7f3").await.unwrap();
    assert_eq!(keys, 4);
    assert!(
        erasure > 0,
        "the erasure id is the FORGET record's log sequence"
    );
    // Acknowledged, so logged: SIGKILL before any snapshot.
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    std::mem::forget(served._dir);

    let check = |client: Client| async move {
        for key in SOFIA {
            assert!(client.profile(key).await.unwrap().is_none(), "{key}");
        }
        assert!(client.profile("user:noor").await.unwrap().is_some());
        let ack = client
            .ingest(vec![
                RawEvent::new("page_view", "web", now()).key("user:sofia")
            ])
            .await
            .unwrap();
        assert_eq!(
            ack.rejected.iter().map(|r| r.code).collect::<Vec<_>>(),
            [34]
        );
        assert_eq!(client.segment_count("email_reachable").await.unwrap(), 1);
    };
    let mut again = serve_on(dir.0.clone());
    wait_ready(&again.http).await;
    check(Client::connect(&again.addr).await.unwrap()).await;
    // A clean stop writes a snapshot and removes the log it covers: the suppression
    // list comes back from the snapshot.
    assert!(sigterm(&mut again, std::time::Duration::from_secs(20)).success());
    std::mem::forget(again._dir);
    let third = serve_on(dir.0.clone());
    wait_ready(&third.http).await;
    check(Client::connect(&third.addr).await.unwrap()).await;
    // The data directory keeps a secret for the list's hashes, readable by its owner only.
    let key = dir.0.join("privacy.key");
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}

/// Files under `dir` that hold `needle`, in clear or as the hex of its bytes.
fn holding(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes).to_lowercase();
            let contains = |n: &[u8]| bytes.windows(n.len()).any(|w| w == n);
            if contains(needle.as_bytes()) || text.contains(&hex) {
                found.push(path);
            }
        }
    }
    found
}

/// Waits (at most 30 s) until erasure `id` is done.
async fn erased(client: &Client, id: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.forget_status(id).await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "erasure {id} still pending after 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn after_the_erasure_no_file_holds_her_keys_even_after_a_kill_before_it() {
    let dir = TempDir::new("privacy", "erasure");
    let (mut served, client) = serve_sofia(&dir).await;
    for key in SOFIA {
        assert!(
            !holding(&dir.0, key).is_empty(),
            "{key} is in the log before"
        );
    }
    let (erasure, _) = client.forget("user:sofia").await.unwrap();
    // Her events after the FORGET are refused before the log: none reaches the disk,
    // where the files written after the erasure's log roll would keep them.
    let ack = client
        .ingest(vec![
            RawEvent::new("page_view", "web", now()).key("email:sofia@example.nl"),
            RawEvent::new("purchase", "store", now())
                .key("card:8812")
                .prop("amount", 5.0),
        ])
        .await
        .unwrap();
    assert_eq!(
        ack.rejected.iter().map(|r| r.code).collect::<Vec<_>>(),
        [34, 34]
    );
    // Killed at once: the erasure, if not done yet, is owed after the restart.
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    std::mem::forget(served._dir);
    let again = serve_on(dir.0.clone());
    wait_ready(&again.http).await;
    let client = Client::connect(&again.addr).await.unwrap();
    erased(&client, erasure).await;
    // Refused after the erasure too, so nothing of hers reaches the new log files.
    let ack = client
        .ingest(vec![
            RawEvent::new("page_view", "web", now()).key("anon:c-7f3")
        ])
        .await
        .unwrap();
    assert_eq!(
        ack.rejected.iter().map(|r| r.code).collect::<Vec<_>>(),
        [34]
    );
    assert_eq!(client.ping().await.map(|_| ()).ok(), Some(()));
    for key in SOFIA {
        assert_eq!(
            holding(&dir.0, key),
            Vec::<std::path::PathBuf>::new(),
            "{key}"
        );
    }
    // What is not forgotten is still on disk (in the snapshot), and still served.
    assert!(!holding(&dir.0, "noor@example.nl").is_empty());
    assert!(client.profile("user:noor").await.unwrap().is_some());
    // ctl says so too.
    let out = std::process::Command::new(common::binary::OMNIA)
        .args([
            "ctl",
            "--addr",
            &again.addr,
            "forget-status",
            &erasure.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("erasure {erasure}: erased")));
}

#[tokio::test]
async fn an_export_holds_the_profile_the_offer_history_and_the_coupons() {
    use omnia::model::decision::DecisionRequest;
    let server = TestServer::with_http().await;
    let client = Client::connect(&server.addr).await.unwrap();
    const MINUTE: i64 = 60_000;
    let account = RawEvent::new("identify", "app", START_MS - 7 * 24 * 60 * MINUTE)
        .key("user:sofia")
        .key("email:sofia@example.com")
        .attr("email_opt_in", true)
        .attr("country", "NL");
    let cart = RawEvent::new("add_to_cart", "web", START_MS)
        .key("anon:c-7f3")
        .key("user:sofia");
    assert_eq!(
        client.ingest(vec![account, cart]).await.unwrap().accepted,
        2
    );
    server.clock.advance_ms(31 * MINUTE);
    let decision = client
        .decide(DecisionRequest {
            key: "email:sofia@example.com".into(),
            channel: "email".into(),
            top: 1,
            record_impression: true,
            explain: false,
            context: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(decision.offers[0].offer, "cart_reminder");

    let export = client.export("anon:c-7f3").await.unwrap();
    // Every field the PROFILE view shows.
    let profile = client.profile("user:sofia").await.unwrap().unwrap();
    assert_eq!(export["profile"], serde_json::to_value(&profile).unwrap());
    // The offer history: the impression on e-mail, the sticky offer, the arms, the coupon.
    let offers = &export["offers"];
    assert_eq!(offers["offers"].as_array().unwrap().len(), 1, "{offers}");
    let entry = &offers["offers"][0];
    assert_eq!(entry["offer"], "cart_reminder");
    assert_eq!(entry["impressions"].as_array().unwrap().len(), 1);
    assert_eq!(entry["impressions"][0]["channel"], "email");
    assert_eq!(entry["accepted_at"], serde_json::Value::Null);
    assert_eq!(offers["sticky"]["offer"], "cart_reminder");
    let arms: Vec<(String, String)> = offers["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["experiment"].as_str().unwrap().into(),
                a["arm"].as_str().unwrap().into(),
            )
        })
        .collect();
    let decided: Vec<(String, String)> = decision
        .arms
        .iter()
        .map(|a| (a.experiment.clone(), a.arm.clone()))
        .collect();
    assert_eq!(arms, decided);
    assert_eq!(offers["coupons"].as_array().unwrap().len(), 1);
    assert_eq!(
        offers["coupons"][0]["code"],
        decision.coupons[0].code.as_str()
    );
    assert_eq!(offers["coupons"][0]["expires"], decision.coupons[0].expires);
    assert_eq!(offers["coupons"][0]["redeemed"], false);
    // The decision remembered for feedback by id.
    let decisions = export["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 1);
    assert_eq!(
        decisions[0]["decision_id"],
        decision.decision_id.to_string()
    );
    assert_eq!(decisions[0]["offers"], serde_json::json!(["cart_reminder"]));

    // Over HTTP, the same document.
    let http = server.http.clone().unwrap();
    let response = common::http_client()
        .get(format!("{http}/v1/profiles/user:sofia/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body, export);
    // Unknown keys: UNKNOWN_CUSTOMER, 404.
    let err = client.export("user:nobody").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(omnia::protocol::ErrorCode::UnknownCustomer)
    );
    let response = common::http_client()
        .get(format!("{http}/v1/profiles/user:nobody/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    server.shutdown().await;
}

#[tokio::test]
async fn retention_forgets_customers_not_seen_for_its_duration_on_the_servers_timers() {
    let text = format!(
        "{}\n[privacy]\nretention = \"400d\"\n",
        omnia::config::DEFAULT_CONFIG
    );
    let config =
        omnia::config::Config::from_source(&omnia::config::Source::new("shop.toml", text)).unwrap();
    let server = TestServer::with_config(config).await;
    let client = Client::connect(&server.addr).await.unwrap();
    assert_eq!(client.ingest(sofia(START_MS)).await.unwrap().accepted, 4);
    const DAY: i64 = 86_400_000;
    server.clock.advance_ms(399 * DAY);
    // Noor comes back on day 399; Sofia does not.
    let back = RawEvent::new("page_view", "web", START_MS + 399 * DAY).key("user:noor");
    assert_eq!(client.ingest(vec![back]).await.unwrap().accepted, 1);
    server.clock.advance_ms(2 * DAY);
    for _ in 0..server.node.config().engine.shards {
        server.node.tick();
    }
    for key in SOFIA {
        assert!(client.profile(key).await.unwrap().is_none(), "{key}");
    }
    assert!(client.profile("user:noor").await.unwrap().is_some());
    assert_eq!(server.node.engine().expired(), 1);
    // Not suppressed: she may come back, as a new customer.
    let ack = client
        .ingest(vec![RawEvent::new(
            "page_view",
            "web",
            START_MS + 401 * DAY,
        )
        .key("card:8812")])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1, "{ack:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_forget_does_not_refund_the_budget_her_accept_spent() {
    use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
    let text = omnia::config::DEFAULT_CONFIG.replacen(
        "budget = { accepts = 10000 }",
        "budget = { accepts = 1 }",
        1,
    );
    let config =
        omnia::config::Config::from_source(&omnia::config::Source::new("shop.toml", text)).unwrap();
    let server = TestServer::with_config(config).await;
    let client = Client::connect(&server.addr).await.unwrap();
    let ask = |key: &str| DecisionRequest {
        key: key.into(),
        channel: "web".into(),
        top: 3,
        record_impression: true,
        explain: false,
        context: Vec::new(),
    };
    let offered = |d: &omnia::model::decision::Decision| {
        d.offers.iter().any(|o| o.offer == "welcome_discount")
    };
    // A new visitor is offered the welcome discount, with a coupon, and accepts it: the
    // budget of one accept is spent.
    client
        .ingest(vec![
            RawEvent::new("page_view", "web", START_MS).key("anon:first")
        ])
        .await
        .unwrap();
    let first = client.decide(ask("anon:first")).await.unwrap();
    assert!(offered(&first), "{first:?}");
    assert!(!first.coupons.is_empty(), "{first:?}");
    client
        .feedback(
            FeedbackKind::Accept,
            FeedbackTarget::Decision {
                decision_id: first.decision_id,
                offer: "welcome_discount".into(),
            },
        )
        .await
        .unwrap();
    // She is forgotten, coupon and all; the money spent stays spent.
    client.forget("anon:first").await.unwrap();
    client
        .ingest(vec![
            RawEvent::new("page_view", "web", START_MS).key("anon:second")
        ])
        .await
        .unwrap();
    let second = client.decide(ask("anon:second")).await.unwrap();
    assert!(!offered(&second), "the budget came back: {second:?}");
    server.shutdown().await;
}
