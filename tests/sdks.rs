//! Real tracker SDKs against the real server: `segment-analytics-python` and
//! `rudder-sdk-python`, installed from PyPI by `scripts/test` into a virtual environment
//! whose interpreter it names in `OMNIA_SDK_PYTHON`, and `@segment/analytics-node`,
//! installed from the npm registry into the `node_modules` it names in
//! `OMNIA_SDK_NODE_MODULES`, send one customer journey (`tests/sdk/send.py`,
//! `tests/sdk/send.cjs`) to `omnia serve` over HTTP; the binary client then reads the
//! merged profile back. Run without `scripts/test`, these tests fail and say how to run
//! them: they never pass by skipping.

mod common;

use common::binary::{serve, wait_ready};
use omnia::client::Client;

/// What `scripts/test` prepared, named by the variable `name`.
fn prepared(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with scripts/test, which installs \
             segment-analytics-python and rudder-sdk-python into a virtual environment \
             (OMNIA_SDK_PYTHON) and @segment/analytics-node into a node_modules \
             (OMNIA_SDK_NODE_MODULES)"
        )
    })
}

/// How to run one SDK's journey: the program and its first arguments (the host and the
/// events' key suffix follow).
fn runner(sdk: &str) -> (String, Vec<String>) {
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");
    match sdk {
        "segment-node" => (
            "node".into(),
            vec![
                format!("{scripts}/send.cjs"),
                prepared("OMNIA_SDK_NODE_MODULES"),
            ],
        ),
        python_sdk => (
            prepared("OMNIA_SDK_PYTHON"),
            vec![format!("{scripts}/send.py"), python_sdk.into()],
        ),
    }
}

/// Sends the journey with `sdk` and checks what the server made of it.
async fn journey(sdk: &str) {
    // Before the server starts: without the SDKs there is nothing to run it for.
    let (program, args) = runner(sdk);
    let mut served = serve();
    wait_ready(&served.http).await;
    let suffix = format!("{sdk}-{}", std::process::id());
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .args([format!("http://{}", served.http), suffix.clone()]);
    let sent = tokio::task::spawn_blocking(move || command.output().expect("run the SDK script"))
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
    // Opted in with an e-mail key; bought, so a customer and no longer a new visitor.
    // (The default config's thank-you trigger may have e-mailed her by now, which makes
    // her active on a second channel: multichannel_shoppers is not asserted.)
    for segment in ["email_reachable", "customers"] {
        assert!(
            profile.segments.iter().any(|s| s == segment),
            "{sdk}: {:?}",
            profile.segments
        );
    }
    assert!(
        !profile.segments.iter().any(|s| s == "new_visitors"),
        "{sdk}: {:?}",
        profile.segments
    );
    assert_eq!(
        profile
            .attributes
            .iter()
            .find(|(n, _)| n == "country")
            .map(|(_, v)| v.clone()),
        Some(omnia::model::RawValue::Str("NL".into())),
        "{sdk}"
    );
    let stats = client.stats_with(false, true, false).await.unwrap();
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

#[tokio::test]
async fn segment_analytics_node_feeds_one_merged_profile() {
    journey("segment-node").await;
}
