//! Real tracker SDKs against the real server: `segment-analytics-python` and
//! `rudder-sdk-python`, installed from PyPI by `scripts/test` into a virtual environment
//! whose interpreter it names in `OMNIA_SDK_PYTHON`, send a customer journey (see
//! `tests/sdk/send.py`) to `omnia serve` over HTTP; the binary client then reads the
//! merged profile back. Run without `scripts/test`, these tests fail and say how to run
//! them: they never pass by skipping.

mod common;

use common::binary::{serve, wait_ready};
use omnia::client::Client;

fn python() -> String {
    std::env::var("OMNIA_SDK_PYTHON").unwrap_or_else(|_| {
        panic!(
            "OMNIA_SDK_PYTHON is not set: run the tests with scripts/test, which installs \
             segment-analytics-python and rudder-sdk-python into a virtual environment and \
             names its python here"
        )
    })
}

/// Sends the journey with `sdk` and checks what the server made of it.
async fn journey(sdk: &str) {
    // Before the server starts: without the SDKs there is nothing to run it for.
    let python = python();
    let mut served = serve();
    wait_ready(&served.http).await;
    let suffix = format!("{sdk}-{}", std::process::id());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/send.py");
    let host = format!("http://{}", served.http);
    let (sdk_name, suffix_arg) = (sdk.to_string(), suffix.clone());
    let sent = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args([script, &sdk_name, &host, &suffix_arg])
            .output()
            .expect("run the SDK script")
    })
    .await
    .unwrap();
    assert!(
        sent.status.success(),
        "{sdk}: {}{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    let client = Client::connect(&served.addr).await.unwrap();
    let profile = client
        .profile(&format!("anon:c-{suffix}"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{sdk}: the cookie's profile is unknown"));
    assert_eq!(profile.primary_key, format!("user:sofia-{suffix}"), "{sdk}");
    let mut keys = profile.keys.clone();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("anon:c-{suffix}"),
            format!("anon:d-{suffix}"),
            format!("email:sofia-{suffix}@example.nl"),
            format!("user:sofia-{suffix}"),
        ],
        "{sdk}"
    );
    assert_eq!(
        profile.aggregate("sum(purchase.amount, 90d)"),
        Some(179.5),
        "{sdk}"
    );
    // Opted in with an e-mail key; bought, so no longer a new visitor.
    assert_eq!(profile.segments, ["email_reachable"], "{sdk}");
    assert_eq!(
        profile
            .attributes
            .iter()
            .find(|(n, _)| n == "country")
            .map(|(_, v)| v.clone()),
        Some(omnia::model::RawValue::Str("NL".into())),
        "{sdk}"
    );
    let stats = client.stats_with(false, true).await.unwrap();
    // The undeclared `currency` was dropped, the order applied, and the drift counted.
    assert_eq!(
        stats.drift.as_ref().map(|d| d.ignored.clone()),
        Some(vec![("purchase".to_string(), "currency".to_string(), 1)]),
        "{sdk}"
    );
    assert_eq!(stats.customers, 1, "{sdk}: one merged customer");
    assert_eq!(stats.events_ingested, 7, "{sdk}: every call applied once");
    served.child.kill().unwrap();
    served.child.wait().unwrap();
}

#[tokio::test]
async fn segment_analytics_python_feeds_one_merged_profile() {
    journey("segment").await;
}

#[tokio::test]
async fn rudder_sdk_python_feeds_one_merged_profile() {
    journey("rudder").await;
}
