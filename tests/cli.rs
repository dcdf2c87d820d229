//! The `omnia` binary as an operator and a script use it: `serve` with metrics,
//! `ctl` commands with tables, JSON and exit codes, SIGTERM, and `check-config`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{
    assert_one_snapshot, ctl, free_port, serve, serve_on, serve_with, sigterm, OMNIA,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serve_ctl_metrics_and_sigterm() {
    let mut served = serve();
    let addr = served.addr.clone();

    let ping = ctl(&addr, &["ping"], None);
    assert!(
        ping.status.success() && text(&ping.stdout).starts_with("pong from omnia"),
        "{}",
        text(&ping.stderr)
    );

    let events = concat!(
        "{\"type\":\"page\",\"anonymousId\":\"c-7f3\",\"properties\":{\"url\":\"/lp\"}}\n",
        "{\"type\":\"identify\",\"userId\":\"sofia\",\"anonymousId\":\"c-7f3\",\"traits\":{\"email\":\"sofia@example.nl\",\"email_opt_in\":true},\"context\":{\"channel\":\"app\"}}\n",
        "\n",
        "{\"type\":\"track\",\"event\":\"purchse\",\"userId\":\"sofia\",\"context\":{\"channel\":\"app\"}}\n",
    );
    let ingest = ctl(&addr, &["--json", "ingest", "-"], Some(events));
    assert_eq!(ingest.status.code(), Some(2), "rejections give exit code 2");
    let report: serde_json::Value = serde_json::from_slice(&ingest.stdout).unwrap();
    assert_eq!(report["accepted"], 2);
    assert_eq!(
        report["rejected"][0]["line"], 4,
        "rejections are reported by input line"
    );
    assert_eq!(report["rejected"][0]["code"], 11);

    let profile = ctl(&addr, &["profile", "anon:c-7f3"], None);
    let shown = text(&profile.stdout);
    assert!(
        shown.contains("(user:sofia)") && shown.contains("email_reachable"),
        "{shown}"
    );
    let profile = ctl(
        &addr,
        &["--json", "profile", "email:sofia@example.nl"],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&profile.stdout).unwrap();
    assert_eq!(json["primary_key"], "user:sofia");
    assert_eq!(
        ctl(&addr, &["profile", "user:nobody"], None).status.code(),
        Some(3)
    );

    assert_eq!(
        text(
            &ctl(
                &addr,
                &["segment", "count", "email_reachable or new_visitors"],
                None
            )
            .stdout
        )
        .trim(),
        "1"
    );
    assert_eq!(
        text(
            &ctl(
                &addr,
                &["segment", "contains", "email_reachable", "user:sofia"],
                None
            )
            .stdout
        )
        .trim(),
        "yes"
    );
    let members = ctl(
        &addr,
        &["--json", "segment", "members", "all", "--limit", "10"],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&members.stdout).unwrap();
    assert_eq!(json["members"][0]["key"], "user:sofia");
    let bad = ctl(&addr, &["segment", "count", "vips"], None);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("UNKNOWN_SEGMENT (18)"),
        "{}",
        text(&bad.stderr)
    );
    let stats = ctl(&addr, &["--json", "stats"], None);
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        (
            json["customers"].as_u64(),
            json["events_ingested"].as_u64(),
            json["events_rejected"].as_u64()
        ),
        (Some(1), Some(2), Some(1))
    );

    // Decisions: a new visitor on the web, shown and accepted in the store.
    let decide = ctl(
        &addr,
        &[
            "decide",
            "anon:new-1",
            "--channel",
            "web",
            "--top",
            "2",
            "--record",
            "--explain",
            "--context",
            "page=cart",
        ],
        None,
    );
    let shown = text(&decide.stdout);
    assert!(decide.status.success(), "{}", text(&decide.stderr));
    assert!(
        shown.contains("(new customer)") && shown.contains("welcome_discount"),
        "{shown}"
    );
    assert!(shown.contains("coupon WELCOME-"), "{shown}");
    assert!(
        shown.contains("rule_false"),
        "the explanation lists excluded offers: {shown}"
    );
    let accept = ctl(
        &addr,
        &[
            "--json",
            "feedback",
            "accept",
            "--offer",
            "welcome_discount",
            "--key",
            "anon:new-1",
            "--channel",
            "store",
        ],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&accept.stdout).unwrap();
    assert!(
        json["coupon"]["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("WELCOME-")),
        "{json}"
    );
    let bad = ctl(
        &addr,
        &["feedback", "like", "--offer", "x", "--decision", "1"],
        None,
    );
    assert!(text(&bad.stderr).contains("`like` is not a kind of feedback"));
    let stats = ctl(&addr, &["stats", "--offers"], None);
    let table = text(&stats.stdout);
    assert!(
        table.contains("welcome_discount") && table.contains("accept%"),
        "{table}"
    );

    // Gauges refresh every 500 ms.
    std::thread::sleep(Duration::from_millis(700));
    let metrics = scrape(&served.metrics);
    for expected in [
        "omnia_events_ingested_total 2",
        "omnia_events_rejected_total{code=\"UNKNOWN_EVENT_TYPE\"} 1",
        "omnia_requests_total{op=\"ingest_json\"} 1",
        "omnia_request_duration_seconds_bucket{op=\"ping\",le=\"0.001\"}",
        "omnia_segment_members{segment=\"email_reachable\"} 1",
        "omnia_customers 2",
        "omnia_offer_feedback_total{offer=\"welcome_discount\",channel=\"store\",experiment=\"\",arm=\"\",kind=\"accept\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing `{expected}` in\n{metrics}"
        );
    }
    // The one FEEDBACK went through every stage, the log's wait included; a PING
    // logs nothing, so it never waits for the log.
    for stage in ["queued", "apply", "journal", "reply"] {
        let expected =
            format!("omnia_request_stage_seconds_count{{op=\"feedback\",stage=\"{stage}\"}} 1\n");
        assert!(
            metrics.contains(&expected),
            "missing `{expected}` in\n{metrics}"
        );
    }
    assert!(metrics.contains("omnia_request_stage_seconds_count{op=\"ping\",stage=\"reply\"}"));
    assert!(
        metrics.contains("omnia_request_stage_seconds_count{op=\"ping\",stage=\"journal\"} 0\n"),
        "{metrics}"
    );

    // The same stages as a table from the command line, and in its JSON.
    let metrics_addr = served.metrics.to_string();
    let latency = ctl(
        &addr,
        &["stats", "--latency", "--metrics", &metrics_addr],
        None,
    );
    let table = text(&latency.stdout);
    assert!(latency.status.success(), "{table}");
    assert!(
        table.contains(
            "the server's own stages (omnia_request_stage_seconds since the server started"
        ),
        "{table}"
    );
    for stage in ["queued", "apply", "journal", "reply"] {
        let row = table
            .lines()
            .find(|l| l.starts_with("feedback") && l.split_whitespace().nth(1) == Some(stage))
            .unwrap_or_else(|| panic!("no feedback {stage} row in\n{table}"));
        assert_eq!(row.split_whitespace().nth(2), Some("1"), "{row}");
    }
    let latency = ctl(
        &addr,
        &["--json", "stats", "--latency", "--metrics", &metrics_addr],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&latency.stdout).unwrap();
    assert_eq!(json["latency"]["stages"]["feedback/journal"]["count"], 1);
    // Nothing listening there: a clear error naming the endpoint, exit 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    let failed = ctl(&addr, &["stats", "--latency", "--metrics", &nowhere], None);
    assert_eq!(failed.status.code(), Some(1));
    let message = text(&failed.stderr);
    assert!(
        message.contains(&format!(
            "cannot connect to the metrics endpoint at {nowhere}"
        )),
        "{message}"
    );

    let exit = sigterm(&mut served, Duration::from_secs(10));
    assert!(exit.success(), "graceful shutdown exits 0, got {exit}");

    // Shutdown wrote a snapshot; a restart loads it and has everything.
    let dir = served._dir.0.clone();
    assert_one_snapshot(&dir);
    std::mem::forget(served._dir);
    // On one request thread this time: the same server, less parallel.
    let mut again = serve_with(dir, &["--threads", "1"]);
    let stats = ctl(&again.addr, &["--json", "stats"], None);
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(json["customers"].as_u64(), Some(2), "{json}");
    again.child.kill().unwrap();
    again.child.wait().unwrap();
}

#[test]
fn check_config_reports_errors_or_a_summary() {
    let good = Command::new(OMNIA)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/retail.toml"),
        ])
        .output()
        .unwrap();
    assert!(good.status.success());
    assert!(text(&good.stdout).contains("is valid"));
    let path = std::env::temp_dir().join(format!("omnia-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "channels = [\"web\"]\n[identity]\nnamespaces = [\"user\"]\n[events.visit]\n[segments.x]\nrule = \"count(vist, 1d) > 0\"\n").unwrap();
    let bad = Command::new(OMNIA)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(bad.status.code(), Some(1));
    let shown = text(&bad.stderr);
    assert!(
        shown.starts_with("error: unknown event type `vist`\n"),
        "{shown}"
    );
    assert!(shown.contains(":6:15\n"), "{shown}");
}

#[test]
fn serve_checks_flags_that_replace_settings_with_the_configs_rules() {
    let dir = std::env::temp_dir().join(format!("omnia-cli-flags-{}", free_port()));
    let addr = format!("127.0.0.1:{}", free_port());
    let bad = Command::new(OMNIA)
        .args([
            "serve",
            "--no-metrics",
            "--no-http",
            "--listen",
            &addr,
            "--shards",
            "12",
        ])
        .args(["--snapshot-interval", "700000", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let shown = text(&bad.stderr);
    assert!(
        shown.contains(
            "error: --shards is 12, but it must be a power of two from 1 to 256\n --> the command line\n"
        ),
        "{shown}"
    );
    assert!(
        shown.contains(
            "error: --snapshot-interval is 700000, but it must be at most 604800 (a week)"
        ),
        "{shown}"
    );
    assert!(shown.contains("2 errors"), "{shown}");
    assert!(
        !dir.exists(),
        "nothing is created for a config that does not validate"
    );
    let zero = Command::new(OMNIA)
        .args([
            "serve",
            "--no-metrics",
            "--no-http",
            "--listen",
            &addr,
            "--threads",
            "0",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(zero.status.code(), Some(1));
    assert!(text(&zero.stderr).contains("--threads 0: from 1 to 1024"));
}

#[test]
fn reload_through_ctl_and_sighup_keeps_serving_and_refuses_an_invalid_config() {
    let dir = std::env::temp_dir().join(format!("omnia-cli-reload-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("omnia.toml");
    std::fs::write(&config, omnia::config::DEFAULT_CONFIG).unwrap();
    let mut served = serve_with(dir.join("data"), &["--config", config.to_str().unwrap()]);
    let addr = served.addr.clone();
    let events: String = (0..6)
        .map(|i| {
            let country = if i % 2 == 0 { "NL" } else { "FR" };
            format!(
                "{{\"type\":\"identify\",\"userId\":\"u{i}\",\"traits\":{{\"country\":\"{country}\"}},\"context\":{{\"channel\":\"web\"}}}}\n\
                 {{\"type\":\"track\",\"event\":\"purchase\",\"userId\":\"u{i}\",\"properties\":{{\"amount\":300}},\"context\":{{\"channel\":\"store\"}}}}\n"
            )
        })
        .collect();
    assert!(ctl(&addr, &["ingest", "-"], Some(&events)).status.success());
    let count = |query: &str| {
        text(&ctl(&addr, &["segment", "count", query], None).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(count("high_value"), "0", "300 is not above 500");

    // An invalid file: refused with its errors and their place; the config stays.
    let broken = omnia::config::DEFAULT_CONFIG.replace(
        "sum(purchase.amount, 90d) > 500",
        "sum(purchse.amount, 90d) > 500",
    );
    std::fs::write(&config, &broken).unwrap();
    let refused = ctl(&addr, &["reload"], None);
    assert_eq!(refused.status.code(), Some(1));
    let message = text(&refused.stderr);
    assert!(
        message.contains("INVALID_CONFIG (27)") && message.contains("the running config stays"),
        "{message}"
    );
    assert!(
        message.contains("omnia.toml:") && message.contains("purchse"),
        "{message}"
    );
    assert_eq!(count("high_value"), "0");

    // A changed file: swapped in, and the report says what changed.
    let changed = omnia::config::DEFAULT_CONFIG
        .replace("sum(purchase.amount, 90d) > 500", "sum(purchase.amount, 90d) > 200")
        .replace(
            "[segments.high_value]",
            "[segments.dutch_buyers]\nrule = 'attr.country == \"NL\" and ever(purchase)'\n\n[segments.high_value]",
        );
    std::fs::write(&config, &changed).unwrap();
    let reloaded = ctl(&addr, &["reload"], None);
    let report = text(&reloaded.stdout);
    assert!(reloaded.status.success(), "{}", text(&reloaded.stderr));
    assert!(report.contains("segments added: dutch_buyers"), "{report}");
    assert!(report.contains("segments changed: high_value"), "{report}");
    assert_eq!(count("high_value"), "6");
    assert_eq!(count("dutch_buyers"), "3");

    // SIGHUP reloads too: back to the default.
    std::fs::write(&config, omnia::config::DEFAULT_CONFIG).unwrap();
    let version = |addr: &str| -> u64 {
        let stats = ctl(addr, &["--json", "stats"], None);
        serde_json::from_slice::<serde_json::Value>(&stats.stdout).unwrap()["config_version"]
            .as_u64()
            .unwrap()
    };
    let default_version = omnia::config::Config::embedded_default().unwrap().version as u64;
    assert_ne!(version(&addr), default_version);
    let hup = Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while version(&addr) != default_version {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count("high_value"), "0");
    assert!(
        text(&ctl(&addr, &["segment", "count", "dutch_buyers"], None).stderr)
            .contains("UNKNOWN_SEGMENT")
    );
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that pipelines requests and never reads a response cannot hold SIGTERM past
/// `--shutdown-timeout`: the server drops it, writes its shutdown snapshot, exits 0, and
/// the restart loads that snapshot.
#[test]
fn sigterm_with_a_client_that_never_reads_stops_within_the_shutdown_deadline() {
    use omnia::protocol::{opcode, Frame, Request};
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("omnia-cli-test-greedy-{port}"));
    let mut served = serve_with(dir.clone(), &["--shutdown-timeout", "2"]);
    let ingest = ctl(
        &served.addr,
        &["ingest", "-"],
        Some(
            r#"{"type":"track","event":"page_view","anonymousId":"greedy","context":{"channel":"web"}}"#,
        ),
    );
    assert!(ingest.status.success(), "{}", text(&ingest.stderr));

    let mut greedy = TcpStream::connect(&served.addr).unwrap();
    let mut bytes = common::raw::hello_frame("never reads");
    for id in 2..20_000 {
        let stats = Request::Stats {
            offers: true,
            drift: false,
            triggers: false,
            experiments: false,
        };
        Frame::new(opcode::STATS, id, stats.encode().unwrap()).write_to(&mut bytes);
    }
    // Writes until the socket buffers are full both ways, then blocks: it never reads.
    let writer = std::thread::spawn(move || {
        let _ = greedy.write_all(&bytes);
        greedy
    });
    std::thread::sleep(Duration::from_millis(500));

    // Without a deadline the server would wait for the idle timeout (300 s).
    let exit = sigterm(&mut served, Duration::from_secs(30));
    assert!(exit.success(), "shutdown exits 0, got {exit}");
    drop(writer.join());
    assert_one_snapshot(&dir);

    std::mem::forget(served._dir);
    let mut again = serve_on(dir);
    let stats = ctl(&again.addr, &["--json", "stats"], None);
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(json["customers"].as_u64(), Some(1), "{json}");
    again.child.kill().unwrap();
    again.child.wait().unwrap();
}
