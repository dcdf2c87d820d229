//! A short run of every workload against a real omnia server on an ephemeral port. It
//! checks that the report is right (counts, rates, no errors, every output format), not
//! speed: rates are low so that a busy 2-core machine keeps up.

mod common;

use common::settings;
use loadgen::run::{run, Workload};
use loadgen::target::{spawn_server, HttpTarget, OmniaTarget, OpKind};
use omnia::config::Config;

async fn server() -> (String, tokio::sync::oneshot::Sender<()>) {
    let (addr, _http, stop) = spawn_server(Config::embedded_default().unwrap())
        .await
        .unwrap();
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_run_over_http_with_gzip_reports_no_errors() {
    let (_addr, http, stop) = spawn_server(Config::embedded_default().unwrap())
        .await
        .unwrap();
    let ids = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let report = run(settings(Workload::Mixed), "omnia over HTTP", || {
        let (http, ids) = (http.clone(), ids.clone());
        async move { Ok(HttpTarget::new(&http, true, ids, None)) }
    })
    .await
    .unwrap();
    let ops: Vec<OpKind> = report.ops.iter().map(|o| o.op).collect();
    assert_eq!(ops, [OpKind::Ingest, OpKind::Decide, OpKind::Feedback]);
    for op in &report.ops {
        assert_eq!(op.errors, 0, "{:?}: {:?}", op.op, op.first_error);
        assert!(op.count > 0, "{:?}", op.op);
    }
    // Every event sent had its own message id: none was taken for a duplicate.
    assert!(report.ops[0].units_per_second > 0.0);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_run_reports_what_the_server_did() {
    let (addr, stop) = server().await;
    let report = run(settings(Workload::Mixed), "omnia", || {
        let addr = addr.clone();
        async move { OmniaTarget::connect(&addr, None, None).await }
    })
    .await
    .unwrap();
    let ops: Vec<OpKind> = report.ops.iter().map(|o| o.op).collect();
    assert_eq!(ops, [OpKind::Ingest, OpKind::Decide, OpKind::Feedback]);
    for op in &report.ops {
        assert_eq!(op.errors, 0, "{:?}: {:?}", op.op, op.first_error);
        assert!(op.count > 0, "{:?}", op.op);
        assert!(op.p50_us > 0.0 && op.p50_us <= op.p99_us && op.p99_us <= op.max_us);
        let target = op.target_rate.unwrap();
        // Requests scheduled in the measured second: the rate, to within one per stream.
        assert!(
            (op.achieved_rate - target).abs() <= 2.0 + target * 0.02,
            "{:?}: {} against {target}",
            op.op,
            op.achieved_rate
        );
    }
    let ingest = &report.ops[0];
    assert_eq!(
        ingest.target_rate,
        Some(100.0),
        "5000 events/s in batches of 50"
    );
    assert_eq!(ingest.units_per_second, ingest.achieved_rate * 50.0);
    // The server saw the events and the decisions: everything sent after the warm-up,
    // and more.
    let client = omnia::client::Client::connect(&addr).await.unwrap();
    let stats = client.stats_with_offers().await.unwrap();
    assert!(stats.events_ingested >= ingest.count * 50);
    let decided: u64 = stats
        .offers
        .iter()
        .filter(|o| o.experiment.is_none())
        .map(|o| o.decisions)
        .sum();
    assert!(decided >= report.ops[1].count, "{decided}");

    let table = report.table();
    assert!(
        table.contains("decide") && table.contains("p99.9"),
        "{table}"
    );
    assert!(!table.contains("NOT REACHED"), "{table}");
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ops"][1]["op"], "decide");
    let html = report.html();
    assert!(html.starts_with("<!doctype html>") && html.matches("<svg").count() == 2);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_closed_loop_runs() {
    let (addr, stop) = server().await;
    let connect = || {
        let addr = addr.clone();
        async move { OmniaTarget::connect(&addr, None, None).await }
    };
    let mut s = settings(Workload::Query);
    s.rate = 300.0;
    let report = run(s, "omnia", connect).await.unwrap();
    assert_eq!(report.ops[0].op, OpKind::Query);
    assert_eq!(report.ops[0].errors, 0, "{:?}", report.ops[0].first_error);

    let mut s = settings(Workload::Ingest);
    s.max = true;
    s.seconds = 0.5;
    let report = run(s, "omnia", connect).await.unwrap();
    assert_eq!(report.ops[0].target_rate, None);
    assert!(report.ops[0].count > 0);
    assert!(report.table().contains("closed loop"));
    let _ = stop.send(());
}
