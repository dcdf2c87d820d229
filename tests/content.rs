//! Offer content: each field's `{...}` placeholders filled for the customer at the
//! decision, the same words on every channel, over TCP and HTTP; the template errors a
//! data team sees.

mod common;

use common::{TestServer, START_MS};
use omnia::client::Client;
use omnia::config::{Config, Source};
use omnia::engine::RawEvent;
use omnia::model::decision::DecisionRequest;
use omnia::model::RawValue;

const OFFER: &str = r#"
[offers.new_in]
description = "New in, in the colours a customer buys."
rule = "ever(purchase)"
channels = ["web", "app", "email"]
value = 50
priority = 9
coupon = { prefix = "NEWIN", valid = "7d" }
content = { title = "Nieuw binnen in {first(purchase.category)}", text = "{count(purchase, 30d)} orders, last {last(purchase.amount)} EUR; {{code}}: {coupon}", url = "https://shop.example/new/{top(product_view.category, 30d)}" }
"#;

fn config(extra: &str) -> Result<Config, omnia::config::ConfigError> {
    let text = format!("{}\n{extra}", common::default_config_without_triggers());
    Config::from_source(&Source::new("content.toml", text))
}

fn ask(key: &str, channel: &str, record: bool) -> DecisionRequest {
    common::ask(key, channel, 1, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_shows_the_same_words_filled_for_the_customer() {
    let mut server = TestServer::with_config(config(OFFER).unwrap()).await;
    let edge = omnia::http::Edge::new(omnia::http::HttpLimits::default());
    edge.ready(server.shared.clone());
    server.serve_http(edge).await;
    let client = Client::connect(&server.addr).await.unwrap();
    let buy = |at: i64, category: &str, amount: f64| {
        RawEvent::new("purchase", "web", at)
            .key("user:sofia")
            .prop("category", RawValue::Str(category.into()))
            .prop("amount", RawValue::Num(amount))
    };
    let view = |at: i64, category: &str| {
        RawEvent::new("product_view", "app", at)
            .key("user:sofia")
            .prop("category", RawValue::Str(category.into()))
    };
    client
        .ingest(vec![
            buy(START_MS - 3_600_000, "shoes", 80.0),
            buy(START_MS - 60_000, "bags", 42.5),
            view(START_MS - 50_000, "coats"),
        ])
        .await
        .unwrap();

    // Shown by e-mail (recorded: the impression issues the coupon the text names).
    let email = client
        .decide(ask("user:sofia", "email", true))
        .await
        .unwrap();
    assert_eq!(email.offers[0].offer, "new_in");
    let code = email
        .coupons
        .iter()
        .find(|c| c.offer == "new_in")
        .unwrap()
        .code
        .clone();
    let content = email.offers[0].content.clone().unwrap();
    assert_eq!(content.title.as_deref(), Some("Nieuw binnen in shoes"));
    assert_eq!(
        content.text,
        Some(format!("2 orders, last 42.5 EUR; {{code}}: {code}"))
    );
    assert_eq!(
        content.url.as_deref(),
        Some("https://shop.example/new/coats")
    );
    assert_eq!(content.image, None);

    // The web shows the same words, its open coupon included, over HTTP too.
    let web = client
        .decide(ask("user:sofia", "web", false))
        .await
        .unwrap();
    assert_eq!(web.offers[0].content, Some(content.clone()));
    let http = server.http.clone().unwrap();
    let answer = common::http_client()
        .post(format!("{http}/v1/decide"))
        .header("content-type", "application/json")
        .body(r#"{"key": "user:sofia", "channel": "app", "top": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(
        answer["offers"][0]["content"]["title"],
        "Nieuw binnen in shoes"
    );
    assert_eq!(
        answer["offers"][0]["content"]["image"],
        serde_json::Value::Null
    );

    // A customer without purchases is not eligible; one with no views gets an empty
    // placeholder, not an error.
    client
        .ingest(vec![RawEvent::new("purchase", "web", START_MS)
            .key("user:ana")
            .prop("amount", RawValue::Num(10.0))])
        .await
        .unwrap();
    let ana = client.decide(ask("user:ana", "web", false)).await.unwrap();
    let content = ana.offers[0].content.clone().unwrap();
    assert_eq!(content.title.as_deref(), Some("Nieuw binnen in "));
    assert_eq!(content.url.as_deref(), Some("https://shop.example/new/"));
    assert!(content.text.unwrap().ends_with("{code}: "), "no coupon yet");
    server.shutdown().await;
}

#[test]
fn template_errors_point_into_the_text() {
    let message = |content: &str| {
        let offer = format!("[offers.probe]\nvalue = 1\ncontent = {{ text = '{content}' }}\n");
        match config(&offer) {
            Ok(_) => panic!("`{content}` was accepted"),
            Err(e) => {
                let d = &e.diagnostics[0];
                (
                    d.message.clone(),
                    d.source_line
                        .chars()
                        .skip(d.column - 1)
                        .take(d.width)
                        .collect::<String>(),
                )
            }
        }
    };
    assert_eq!(
        message("Hi {first(purchase.category)"),
        (
            "`{` without its `}` in offers.probe.content.text".to_string(),
            "{first(purchase.category)".to_string()
        )
    );
    assert_eq!(
        message("Hi } there"),
        (
            "`}` without its `{` in offers.probe.content.text".to_string(),
            "}".to_string()
        )
    );
    assert_eq!(
        message("{ever(purchase)}"),
        (
            "a placeholder shows a number or a string, and this is a condition (true or false)"
                .to_string(),
            "ever(purchase)".to_string()
        )
    );
    let (m, under) = message("{frist(purchase.category)}");
    assert_eq!(m, "unknown function `frist`");
    assert_eq!(under, "frist");
}
