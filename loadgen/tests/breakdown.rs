//! loadgen prints the server's own stage breakdown for the measured window: a short
//! mixed run against a server whose `/metrics` is served on an ephemeral port. In a file
//! of its own, since the metrics recorder is global to the process.

use std::sync::Arc;

mod common;

use common::settings;
use loadgen::breakdown::Scrape;
use loadgen::run::{run, Workload};
use loadgen::target::OmniaTarget;
use omnia::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reports_the_servers_stages_for_its_window() {
    let handle = omnia::server::metrics::install().unwrap();
    let node = Arc::new(omnia::node::Node::new(
        Config::embedded_default().unwrap(),
        Arc::new(omnia::clock::SystemClock),
    ));
    let shared = Arc::new(omnia::server::Shared::new(
        node,
        omnia::server::Limits::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr_of_metrics = metrics.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(omnia::http::serve_metrics(
        metrics,
        handle,
        shared.clone(),
        std::future::pending(),
    ));
    tokio::spawn(omnia::server::run(listener, shared, async move {
        let _ = stopped.await;
    }));

    let mut settings = settings(Workload::Mixed);
    settings.connections = 1;
    settings.warmup = 0.3;
    settings.seed = 3;
    settings.metrics = Some(Scrape {
        addr: addr_of_metrics,
        token: None,
    });
    let report = run(settings, "omnia", || {
        let addr = addr.clone();
        async move { OmniaTarget::connect(&addr, None, None).await }
    })
    .await
    .unwrap();
    assert_eq!(report.server_note, None);
    let server = report.server.as_ref().expect("a breakdown");
    let decided = report.ops[1].count;
    let apply = &server.stages["decide/apply"];
    // The window holds this run's measured decisions, give or take the ones in flight at
    // its two edges, and none of the warm-up's (about 120 at 400/s).
    assert!(
        apply.count + 40 >= decided && apply.count <= decided + 40,
        "the server counted {} decisions in the window, loadgen {decided}",
        apply.count
    );
    for stage in ["queued", "apply", "reply"] {
        assert!(
            server.stages.contains_key(&format!("ingest/{stage}")),
            "ingest/{stage}: {:?}",
            server.stages.keys()
        );
    }
    let table = report.table();
    assert!(table.contains("the server's own stages"), "{table}");
    assert!(table.contains("decide    apply"), "{table}");
    let _ = stop.send(());
}
