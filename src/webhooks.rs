//! `omnia webhooks`: a webhook receiver that prints the deliveries of triggers, for
//! trying triggers out before an e-mail service receives them (the default config's
//! webhooks point at it).
//!
//! Every POST is answered `--status` (200 by default: delivered) and printed as one
//! line: the delivery id, the attempt, the trigger, the customer's key, the offer and
//! the coupon; with `--json`, the document itself, one per line. A status other than
//! 2xx shows the runner's retries (503) or a dead letter (400).

use std::net::SocketAddr;

use anyhow::Context;
use axum::http::{HeaderMap, StatusCode};

#[derive(clap::Args)]
pub struct WebhooksOptions {
    /// Where to listen (the default config's webhooks post to 127.0.0.1:8900).
    #[arg(long, default_value = "127.0.0.1:8900")]
    listen: SocketAddr,
    /// Print each document as one line of JSON.
    #[arg(long)]
    json: bool,
    /// The HTTP status to answer with.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..600))]
    status: u16,
}

/// One delivery as a line of text.
fn line(headers: &HeaderMap, body: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let attempt = headers
        .get("omnia-attempt")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    let decision = &body["decision"];
    let offer = text(&decision["offers"][0]["offer"]);
    let coupon = decision["coupons"]
        .as_array()
        .and_then(|coupons| {
            coupons
                .iter()
                .find(|c| c["offer"].as_str() == Some(offer.as_str()))
        })
        .map_or("-".to_string(), |c| text(&c["code"]));
    format!(
        "{} attempt {attempt}: {} {} {} for {} on {}: offer {offer}, coupon {coupon}",
        text(&body["delivery_id"]),
        text(&body["trigger"]),
        text(&body["change"]),
        text(&body["segment"]),
        text(&body["customer"]["key"]),
        text(&body["channel"]),
    )
}

pub fn run(options: WebhooksOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        eprintln!(
            "receiving trigger deliveries on http://{} (any path), answering {}",
            listener.local_addr()?,
            options.status
        );
        let status = StatusCode::from_u16(options.status)?;
        let json = options.json;
        let app = axum::Router::new().fallback(axum::routing::post(
            move |headers: HeaderMap, body: axum::body::Bytes| async move {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(document) if json => println!("{document}"),
                    Ok(document) => println!("{}", line(&headers, &document)),
                    Err(e) => eprintln!(
                        "a POST whose body is not JSON ({e}): {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
                status
            },
        ));
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_one_readable_line() {
        let mut headers = HeaderMap::new();
        headers.insert("omnia-attempt", "2".parse().unwrap());
        let body = serde_json::json!({
            "delivery_id": "cart_reminder-1044",
            "trigger": "cart_reminder",
            "change": "enter",
            "segment": "cart_abandoners",
            "channel": "email",
            "customer": { "key": "email:sofia@example.com" },
            "decision": {
                "offers": [{ "offer": "cart_reminder" }],
                "coupons": [
                    { "offer": "welcome_discount", "code": "WELCOME-1" },
                    { "offer": "cart_reminder", "code": "CART10-3H7K2M9Q" }
                ]
            }
        });
        assert_eq!(
            line(&headers, &body),
            "cart_reminder-1044 attempt 2: cart_reminder enter cart_abandoners for email:sofia@example.com on email: offer cart_reminder, coupon CART10-3H7K2M9Q"
        );
        let bare = serde_json::json!({ "delivery_id": "t-1", "decision": null });
        assert_eq!(
            line(&HeaderMap::new(), &bare),
            "t-1 attempt ?: - - - for - on -: offer -, coupon -"
        );
    }
}
