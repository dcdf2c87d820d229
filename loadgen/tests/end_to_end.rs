//! A short run of every workload against a real omnia server on an ephemeral port. It
//! checks that the report is right (counts, rates, no errors, every output format), not
//! speed: rates are low so that a busy 2-core machine keeps up.

mod common;

use common::settings;
use loadgen::run::{run, Workload};
use loadgen::target::{spawn_server, spawn_server_on, HttpTarget, OmniaTarget, OpKind};
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
    // The experiment reports came back over HTTP too.
    assert_eq!(report.experiments_note, None);
    let names: Vec<&str> = report
        .experiments
        .iter()
        .flatten()
        .map(|e| e.experiment.as_str())
        .collect();
    assert_eq!(names, ["cart_reminder_boost"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_run_prints_the_experiment_report_beside_the_effect_it_built_in() {
    let config = Config::embedded_default().unwrap();
    let mut s = settings(Workload::Mixed);
    s.seconds = 2.0;
    s.decide_rate = 800.0;
    s.effect = loadgen::effect::Effect::new(&config, None, None, 0.5, s.customers)
        .unwrap()
        .map(std::sync::Arc::new);
    // The engine on the run's simulated clock: carts are left for 30 minutes in half a
    // second, so decisions meet cart abandoners and expose them.
    let (addr, _http, stop) = spawn_server_on(config, std::sync::Arc::new(s.clock))
        .await
        .unwrap();
    let report = run(s, "omnia", || {
        let addr = addr.clone();
        async move { OmniaTarget::connect(&addr, None, None).await }
    })
    .await
    .unwrap();
    for op in &report.ops {
        assert_eq!(op.errors, 0, "{:?}: {:?}", op.op, op.first_error);
    }
    assert_eq!(report.experiments_note, None);
    let experiments = report.experiments.as_ref().unwrap();
    let boost = experiments
        .iter()
        .find(|e| e.experiment == "cart_reminder_boost")
        .unwrap();
    let exposed: Vec<u64> = boost.arms.iter().map(|a| a.exposed).collect();
    assert!(exposed.iter().all(|&n| n > 0), "{exposed:?}");
    // The generator learnt arms and exposures from the answers, in both arms, and the
    // names agree; omnia exposes at least everyone the answers showed the reminder to.
    let effect = report.effect.as_ref().unwrap();
    assert_eq!(effect.treated_arm, "boosted");
    for (mine, theirs) in effect.arms.iter().zip(&boost.arms) {
        assert_eq!(mine.arm, theirs.arm);
        assert!(mine.shown > 0 && mine.placed >= mine.shown, "{mine:?}");
        assert!(theirs.exposed >= mine.shown, "{mine:?} {theirs:?}");
    }
    let table = report.table();
    assert!(
        table.contains("true effect built into the journeys: in experiment cart_reminder_boost, arm boosted, once shown an exposing offer, takes each step towards a purchase +50% more often"),
        "{table}"
    );
    assert!(
        table.contains("experiment cart_reminder_boost (baseline standard):"),
        "{table}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["experiments"][0]["experiment"], "cart_reminder_boost");
    assert_eq!(json["effect"]["lift"], 0.5);
    let _ = stop.send(());
}
