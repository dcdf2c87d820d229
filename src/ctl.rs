//! `omnia ctl`: a command-line client for a running server, built on `omnia::client`.
//!
//! Every command prints a readable table by default and JSON with `--json`, so it
//! serves both people at a terminal and scripts.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use omnia::client::{Client, ClientError, ClientOptions};
use omnia::model::decision::{Decision, DecisionRequest, FeedbackKind, FeedbackTarget, OfferStats};
use omnia::model::RawValue;

#[derive(Args)]
pub struct CtlOptions {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7878", global = true)]
    addr: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for a connection to the server (retries included).
    #[arg(long, default_value_t = 5, value_name = "SECONDS", global = true)]
    connect_timeout: u64,
    /// Seconds to wait for each response.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", global = true)]
    timeout: u64,
    /// A token from `omnia credentials add`, for a server that requires credentials.
    #[arg(long, env = "OMNIA_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Connect with TLS, checking the server's certificate against this CA (PEM).
    #[arg(long, value_name = "FILE", global = true)]
    tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a server that requires one (with --tls-key).
    #[arg(long, value_name = "FILE", global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, value_name = "FILE", global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Check that the server answers.
    Ping,
    /// Send newline-delimited JSON events (Segment Spec shape) from a file, or `-` for stdin.
    Ingest {
        file: PathBuf,
        /// Events per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Show the profile of the customer a key belongs to.
    Profile { key: String },
    /// Segment queries.
    #[command(subcommand)]
    Segment(SegmentCommand),
    /// Forget the customer a key belongs to: every key, the profile, segment
    /// memberships, offer state and coupons; its keys are then suppressed. Prints the
    /// erasure's id.
    Forget { key: String },
    /// Everything held on the customer a key belongs to, as one JSON document.
    Export { key: String },
    /// Whether a FORGET's erasure from the data directory is done (exit code 4 while it
    /// is pending).
    ForgetStatus { erasure_id: u64 },
    /// Make the server read its config file again and swap it in, without a restart;
    /// prints what changed. An invalid file is refused with its errors (exit code 1).
    Reload,
    /// The experiment report: per measured experiment, the customers exposed in each
    /// arm, the sample-ratio check, and per goal each arm's conversions against the
    /// baseline (lift, 95% interval, p-value, chance to beat the baseline).
    Experiments {
        /// Only this experiment (`holdout` for the global holdout).
        name: Option<String>,
    },
    /// Server counters and segment sizes.
    Stats {
        /// Also show every offer's decisions and feedback per channel and experiment arm.
        #[arg(long)]
        offers: bool,
        /// Also show the tracking-plan drift: properties and attributes ingest dropped
        /// (`engine.unknown_properties = "ignore"`) and unknown event types, by name.
        #[arg(long)]
        drift: bool,
        /// Also show the triggers' deliveries: per trigger, scheduled, delivered,
        /// failed attempts, dead letters, cancelled and pending; and the newest dead
        /// letters.
        #[arg(long)]
        triggers: bool,
        /// Also show where requests' time went inside the server, per operation and
        /// stage (queued, apply, journal, reply), since it started: read from its
        /// Prometheus endpoint (`--metrics`), which needs the `read` role.
        #[arg(long)]
        latency: bool,
        /// The server's Prometheus endpoint (`serve --metrics-listen`), for --latency.
        #[arg(long, default_value = "127.0.0.1:9878", value_name = "ADDR")]
        metrics: String,
    },
    /// Ask which offers to present to the customer with KEY on a channel.
    Decide {
        key: String,
        #[arg(long)]
        channel: String,
        /// How many offers, best first.
        #[arg(long, default_value_t = 1)]
        top: u8,
        /// A context field, `name=value`; the value is read as JSON when it parses
        /// (`5`, `true`, `"42"`), as a string otherwise. Repeat for more fields.
        #[arg(long = "context", value_name = "NAME=VALUE")]
        context: Vec<String>,
        /// Explain every offer: chosen, or which constraint excluded it.
        #[arg(long)]
        explain: bool,
        /// Record an impression of every returned offer (the channel shows them).
        #[arg(long)]
        record: bool,
    },
    /// Report what a customer did with an offer: impression, click, accept or dismiss.
    Feedback {
        /// impression, click, accept or dismiss.
        kind: String,
        /// The offer.
        #[arg(long)]
        offer: String,
        /// The decision that returned the offer.
        #[arg(long, conflicts_with_all = ["key", "channel"], required_unless_present = "key")]
        decision: Option<u64>,
        /// Without a decision id: the customer's key ...
        #[arg(long, requires = "channel")]
        key: Option<String>,
        /// ... and the channel the customer acted on.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Redeem a coupon by its code, once, as a till does when it scans one: prints the
    /// offer and the holder; a code already redeemed, expired, mistyped or not valid on
    /// the channel is refused with what and why.
    Redeem {
        /// The code, as printed or scanned (letters in any case).
        code: String,
        /// The channel redeeming it.
        #[arg(long)]
        channel: String,
        /// The order's value, which goes into the holder's profile with the redemption.
        #[arg(long)]
        order_value: Option<f64>,
    },
    /// Print the change stream's segment changes as they happen, one line each (one
    /// JSON object per line with --json), acknowledging each one printed.
    Subscribe {
        /// Segments to follow (on the stream, `[triggers] stream`); none: all of them.
        segments: Vec<String>,
        /// A named subscription resumes after the last change it acknowledged, across
        /// reconnects and server restarts.
        #[arg(long)]
        name: Option<String>,
        /// Where to start without an acknowledged position: `now`, `earliest`, or a
        /// position (which replaces a named subscription's).
        #[arg(long, default_value = "now", value_name = "POS")]
        from: String,
        /// Stop after this many changes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum SegmentCommand {
    /// Number of customers a segment or set-algebra query selects.
    Count { query: String },
    /// Members of a segment or query, a page at a time.
    Members {
        query: String,
        #[arg(long, default_value_t = 0)]
        cursor: u32,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Whether the customer with KEY is in SEGMENT.
    Contains { segment: String, key: String },
}

pub fn run(options: CtlOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(options)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

async fn execute(options: CtlOptions) -> Result<ExitCode, ClientError> {
    let tls = match &options.tls_ca {
        None if options.tls_cert.is_some() => {
            return Err(ClientError::Encode(
                "--tls-cert needs --tls-ca, the CA that signed the server's certificate".into(),
            ))
        }
        None => None,
        Some(ca) => {
            let identity = options.tls_cert.as_deref().zip(options.tls_key.as_deref());
            Some(
                omnia::tls::client_config(ca, identity)
                    .map_err(|e| ClientError::Encode(e.to_string()))?,
            )
        }
    };
    let timeouts = ClientOptions {
        connect_timeout: std::time::Duration::from_secs(options.connect_timeout.max(1)),
        request_timeout: std::time::Duration::from_secs(options.timeout.max(1)),
        token: options.token.clone(),
        tls,
    };
    let client = Client::connect_with(&options.addr, timeouts).await?;
    let json = options.json;
    let token = options.token.clone();
    match options.command {
        CtlCommand::Ping => {
            let started = std::time::Instant::now();
            client.ping().await?;
            let rtt = started.elapsed();
            let info = client.server_info();
            if json {
                print_json(
                    &serde_json::json!({ "pong": true, "rtt_us": rtt.as_micros() as u64, "server": info.as_ref().map(|i| i.server.clone()), "config_version": info.as_ref().map(|i| format!("{:08x}", i.config_version)) }),
                );
            } else {
                let info = info
                    .map(|i| format!(" from {} (config {:08x})", i.server, i.config_version))
                    .unwrap_or_default();
                println!("pong{info} in {rtt:.2?}");
            }
        }
        CtlCommand::Ingest { file, batch } => {
            let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                match std::fs::File::open(&file) {
                    Ok(f) => Box::new(std::io::BufReader::new(f)),
                    Err(e) => {
                        eprintln!("error: cannot open {}: {e}", file.display());
                        return Ok(ExitCode::FAILURE);
                    }
                }
            };
            let (mut accepted, mut rejected) = (0u64, Vec::new());
            let mut chunk = Vec::new();
            let mut line_numbers = Vec::new();
            let mut lines = reader.lines().enumerate().peekable();
            while lines.peek().is_some() {
                chunk.clear();
                line_numbers.clear();
                while line_numbers.len() < batch.max(1) {
                    let Some((n, line)) = lines.next() else { break };
                    let line = match line {
                        Ok(line) => line,
                        Err(e) => {
                            eprintln!("error: cannot read line {}: {e}", n + 1);
                            return Ok(ExitCode::FAILURE);
                        }
                    };
                    if line.trim().is_empty() {
                        continue;
                    }
                    chunk.extend_from_slice(line.as_bytes());
                    chunk.push(b'\n');
                    line_numbers.push(n + 1);
                }
                if line_numbers.is_empty() {
                    break;
                }
                let ack = client.ingest_json(chunk.clone()).await?;
                accepted += ack.accepted as u64;
                for r in ack.rejected {
                    let line = line_numbers.get(r.index as usize).copied().unwrap_or(0);
                    rejected.push(
                        serde_json::json!({ "line": line, "code": r.code, "message": r.message }),
                    );
                }
            }
            if json {
                print_json(&serde_json::json!({ "accepted": accepted, "rejected": rejected }));
            } else {
                println!("accepted {accepted}, rejected {}", rejected.len());
                for r in &rejected {
                    println!(
                        "  line {}: {} (code {})",
                        r["line"],
                        r["message"].as_str().unwrap_or(""),
                        r["code"]
                    );
                }
            }
            if !rejected.is_empty() {
                return Ok(ExitCode::from(2));
            }
        }
        CtlCommand::Profile { key } => match client.profile(&key).await? {
            Some(profile) if json => print_json(&profile),
            Some(profile) => println!("{profile}"),
            None => {
                eprintln!("no customer has the key `{key}`");
                return Ok(ExitCode::from(3));
            }
        },
        CtlCommand::Segment(SegmentCommand::Count { query }) => {
            let n = client.segment_count(&query).await?;
            if json {
                print_json(&serde_json::json!({ "query": query, "count": n }));
            } else {
                println!("{n}");
            }
        }
        CtlCommand::Segment(SegmentCommand::Members {
            query,
            cursor,
            limit,
        }) => {
            let (members, next) = client.segment_members(&query, cursor, limit).await?;
            if json {
                let members: Vec<_> = members
                    .iter()
                    .map(|(id, key)| serde_json::json!({ "customer": id, "key": key }))
                    .collect();
                print_json(
                    &serde_json::json!({ "query": query, "members": members, "next_cursor": next }),
                );
            } else {
                println!("{:>12}  primary key", "customer");
                for (id, key) in &members {
                    println!("{id:>12}  {key}");
                }
                match next {
                    Some(next) => println!("more: --cursor {next}"),
                    None => println!("(end)"),
                }
            }
        }
        CtlCommand::Segment(SegmentCommand::Contains { segment, key }) => {
            let member = client.segment_contains(&segment, &key).await?;
            if json {
                print_json(
                    &serde_json::json!({ "segment": segment, "key": key, "member": member }),
                );
            } else {
                println!("{}", if member { "yes" } else { "no" });
            }
        }
        CtlCommand::Decide {
            key,
            channel,
            top,
            context,
            explain,
            record,
        } => {
            let mut fields = Vec::new();
            for item in &context {
                let Some((name, value)) = item.split_once('=') else {
                    eprintln!("error: --context `{item}` is not `name=value`");
                    return Ok(ExitCode::FAILURE);
                };
                let value = match serde_json::from_str::<serde_json::Value>(value) {
                    Ok(serde_json::Value::Bool(b)) => RawValue::Bool(b),
                    Ok(serde_json::Value::Number(n)) => {
                        RawValue::Num(n.as_f64().unwrap_or(f64::NAN))
                    }
                    Ok(serde_json::Value::String(s)) => RawValue::Str(s),
                    _ => RawValue::Str(value.to_string()),
                };
                fields.push((name.to_string(), value));
            }
            let decision = client
                .decide(DecisionRequest {
                    key,
                    channel,
                    top,
                    record_impression: record,
                    explain,
                    context: fields,
                })
                .await?;
            if json {
                print_json(&decision);
            } else {
                print!("{}", render_decision(&decision));
            }
        }
        CtlCommand::Feedback {
            kind,
            offer,
            decision,
            key,
            channel,
        } => {
            let Some(kind) = FeedbackKind::from_name(&kind) else {
                eprintln!("error: `{kind}` is not a kind of feedback; use impression, click, accept or dismiss");
                return Ok(ExitCode::FAILURE);
            };
            let target = match (decision, key, channel) {
                (Some(decision_id), _, _) => FeedbackTarget::Decision { decision_id, offer },
                (None, Some(key), Some(channel)) => FeedbackTarget::Customer {
                    key,
                    offer,
                    channel,
                },
                _ => {
                    eprintln!("error: name the decision (--decision ID) or the customer and channel (--key KEY --channel CH)");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let result = client.feedback(kind, target).await?;
            if json {
                print_json(&result);
            } else {
                println!("recorded {kind} (decision {})", result.decision_id);
                if let Some(c) = &result.coupon {
                    let verb = if kind == FeedbackKind::Accept {
                        "redeemed"
                    } else {
                        "coupon"
                    };
                    println!("{verb} {} for {} (expires {})", c.code, c.offer, c.expires);
                }
            }
        }
        CtlCommand::Redeem {
            code,
            channel,
            order_value,
        } => {
            let r = client.redeem(&code, &channel, order_value).await?;
            if json {
                print_json(&r);
            } else {
                println!(
                    "redeemed {} for {} on {} (holder {}, issued {}, expires {}, decision {})",
                    r.code, r.offer, r.channel, r.key, r.issued, r.expires, r.decision_id
                );
            }
        }
        CtlCommand::Forget { key } => {
            let (erasure_id, keys) = client.forget(&key).await?;
            if json {
                print_json(
                    &serde_json::json!({ "erasure_id": erasure_id.to_string(), "keys": keys }),
                );
            } else {
                println!("forgotten: a customer with {keys} keys (erasure {erasure_id}); its keys are suppressed");
            }
        }
        CtlCommand::Export { key } => {
            // Always JSON: the export is a document, for the person and for machines.
            print_json(&client.export(&key).await?);
        }
        CtlCommand::ForgetStatus { erasure_id } => {
            let status = client.forget_status(erasure_id).await?;
            let at = status.filter(|&ms| ms > 0).and_then(|ms| {
                jiff::Timestamp::from_millisecond(ms)
                    .ok()
                    .map(|t| t.to_string())
            });
            if json {
                print_json(&serde_json::json!({
                    "erasure_id": erasure_id.to_string(),
                    "status": if status.is_some() { "erased" } else { "pending" },
                    "erased_at": at,
                }));
            } else {
                match (status, &at) {
                    (None, _) => println!("erasure {erasure_id}: pending"),
                    (Some(_), Some(at)) => println!("erasure {erasure_id}: erased at {at}"),
                    (Some(_), None) => println!("erasure {erasure_id}: erased"),
                }
            }
            if status.is_none() {
                return Ok(ExitCode::from(4));
            }
        }
        CtlCommand::Subscribe {
            segments,
            name,
            from,
            count,
        } => {
            subscribe(&client, &segments, name.as_deref(), &from, count, json).await?;
        }
        CtlCommand::Reload => {
            let report = client.reload().await?;
            if json {
                print_json(&report);
            } else {
                println!("{report}");
            }
        }
        CtlCommand::Experiments { name } => {
            let mut reports = client.experiments().await?;
            if let Some(name) = &name {
                reports.retain(|r| r.experiment == *name);
                if reports.is_empty() {
                    eprintln!("error: no measured experiment is named `{name}`: an experiment is measured when it lists `goals` (or, for `holdout`, when `[decisions] holdout` is set)");
                    return Ok(ExitCode::FAILURE);
                }
            }
            if json {
                print_json(&reports);
            } else if reports.is_empty() {
                println!("no experiment is measured: give one `goals = [...]` (docs/decisioning.md, \"Measuring an experiment\")");
            } else {
                for report in &reports {
                    print!("{}", omnia::decide::report::render(report));
                }
            }
        }
        CtlCommand::Stats {
            offers,
            drift,
            triggers,
            latency,
            metrics,
        } => {
            let stats = client.stats_with(offers, drift, triggers).await?;
            let stages = if latency {
                match omnia::client::stages::scrape(&metrics, token.as_deref()).await {
                    Ok(stages) => Some(stages),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            } else {
                None
            };
            if json {
                let mut value = serde_json::to_value(&stats).unwrap_or_default();
                if let (Some(stages), Some(map)) = (&stages, value.as_object_mut()) {
                    map.insert(
                        "latency".into(),
                        serde_json::to_value(stages).unwrap_or_default(),
                    );
                }
                print_json(&value);
            } else {
                println!("uptime           {:.1}s", stats.uptime_ms as f64 / 1000.0);
                println!("config version   {:08x}", stats.config_version);
                println!("customers        {}", stats.customers);
                println!("keys             {}", stats.keys);
                println!("events ingested  {}", stats.events_ingested);
                println!("events rejected  {}", stats.events_rejected);
                println!("merges           {}", stats.merges);
                println!("connections      {}", stats.connections);
                match stats.reload_progress {
                    Some(percent) => println!(
                        "reloads          {} (one running: {percent}% of customers moved)",
                        stats.reloads
                    ),
                    None => println!("reloads          {}", stats.reloads),
                }
                println!("segments:");
                for (name, n) in &stats.segments {
                    println!("  {name:<24} {n:>10}");
                }
                if offers {
                    print!("{}", render_offer_stats(&stats.offers));
                }
                if let Some(d) = &stats.drift {
                    print!("{}", render_drift(d));
                }
                if let Some(t) = &stats.triggers {
                    print!("{}", render_triggers(t));
                }
                if let Some(stages) = &stages {
                    print!(
                        "{}",
                        stages.table(" since the server started", &stages.ops())
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A decision as a person reads it: the offers, then the arms and coupons, then (when
/// asked for) why every other offer was not chosen.
fn render_decision(d: &Decision) -> String {
    let mut out = format!(
        "decision {} ({} customer)\n",
        d.decision_id,
        if d.known_customer { "known" } else { "new" }
    );
    if d.offers.is_empty() {
        out.push_str("  no offer is eligible\n");
    }
    for (i, o) in d.offers.iter().enumerate() {
        out.push_str(&format!(
            "  {}. {:<24} score {:>10.4}  priority {}{}\n",
            i + 1,
            o.offer,
            o.score,
            o.priority,
            if o.sticky { "  (sticky)" } else { "" }
        ));
        if let Some(c) = &o.content {
            for (name, value) in ["title", "text", "url", "image"].iter().zip(c.fields()) {
                if let Some(v) = value {
                    out.push_str(&format!("       {name:<6} {v}\n"));
                }
            }
        }
    }
    for a in &d.arms {
        out.push_str(&format!("  experiment {}: arm {}\n", a.experiment, a.arm));
    }
    for c in &d.coupons {
        out.push_str(&format!(
            "  coupon {} for {} (expires {})\n",
            c.code, c.offer, c.expires
        ));
    }
    if !d.explanation.is_empty() {
        out.push_str("  every offer considered:\n");
        for e in &d.explanation {
            let score = if e.score.is_nan() {
                String::from("-")
            } else {
                format!("{:.4}", e.score)
            };
            out.push_str(&format!(
                "    {:<24} {:<18} {:>10}  {}\n",
                e.offer,
                e.outcome.name(),
                score,
                e.detail
            ));
        }
    }
    out
}

/// The triggers' section as `ctl stats --triggers` prints it.
fn render_triggers(t: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let Some(triggers) = t["triggers"].as_object() else {
        out.push_str("triggers: none run here (the server has no data directory)\n");
        return out;
    };
    let _ = writeln!(
        out,
        "triggers (changes recorded {}, runner at stream position {}):",
        t["changes_recorded"].as_u64().unwrap_or(0),
        t["cursor"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "  {:<24} {:>9} {:>9} {:>7} {:>5} {:>9} {:>7}",
        "trigger", "scheduled", "delivered", "failed", "dead", "cancelled", "pending"
    );
    for (name, c) in triggers {
        let n = |field: &str| c[field].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {name:<24} {:>9} {:>9} {:>7} {:>5} {:>9} {:>7}",
            n("scheduled"),
            n("delivered"),
            n("failed"),
            n("dead"),
            n("cancelled"),
            n("pending")
        );
    }
    let dead = t["dead_letters"].as_array().cloned().unwrap_or_default();
    if dead.is_empty() {
        out.push_str("dead letters: none\n");
    } else {
        let _ = writeln!(out, "dead letters (newest last, {}):", dead.len());
        for d in dead.iter().rev().take(20).rev() {
            let _ = writeln!(
                out,
                "  {} after {} attempts: {}",
                d["id"].as_str().unwrap_or(""),
                d["attempts"],
                d["error"].as_str().unwrap_or("")
            );
        }
    }
    out
}

/// Drift as `ctl stats --drift` prints it: what to add to the config, or to fix in a
/// tracker.
fn render_drift(d: &omnia::protocol::message::StatsDrift) -> String {
    let mut out = String::new();
    if d.ignored.is_empty() && d.unknown_events.is_empty() {
        out.push_str("drift: none (every property and event type sent is declared)\n");
        return out;
    }
    if !d.ignored.is_empty() {
        out.push_str("ignored properties (not declared; dropped, the events applied):\n");
        for (event, property, n) in &d.ignored {
            out.push_str(&format!("  {event:<20} {property:<24} {n:>10}\n"));
        }
    }
    if !d.unknown_events.is_empty() {
        out.push_str("unknown event types (rejected):\n");
        for (name, n) in &d.unknown_events {
            out.push_str(&format!("  {name:<45} {n:>10}\n"));
        }
    }
    out
}

fn render_offer_stats(rows: &[OfferStats]) -> String {
    let mut out = format!(
        "offers:\n  {:<20} {:<12} {:<24} {:>9} {:>11} {:>7} {:>8} {:>8} {:>7}\n",
        "offer",
        "channel",
        "experiment/arm",
        "decisions",
        "impressions",
        "clicks",
        "accepts",
        "dismiss",
        "accept%"
    );
    for r in rows {
        let arm = match (&r.experiment, &r.arm) {
            (Some(e), Some(a)) => format!("{e}/{a}"),
            _ => "(all)".to_string(),
        };
        let rate = r
            .accept_rate()
            .map(|x| format!("{:.1}", x * 100.0))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "  {:<20} {:<12} {:<24} {:>9} {:>11} {:>7} {:>8} {:>8} {:>7}\n",
            r.offer,
            r.channel,
            arm,
            r.decisions,
            r.impressions,
            r.clicks,
            r.accepts,
            r.dismisses,
            rate
        ));
    }
    out
}

/// `ctl subscribe`: prints changes as they come and acknowledges each printed one.
async fn subscribe(
    client: &Client,
    segments: &[String],
    name: Option<&str>,
    from: &str,
    count: Option<u64>,
    json: bool,
) -> Result<(), ClientError> {
    use omnia::protocol::message::StreamFrom;
    use std::io::Write;
    let from = match from {
        "now" => StreamFrom::Now,
        "earliest" => StreamFrom::Earliest,
        position => StreamFrom::Position(position.parse().map_err(|_| {
            ClientError::Encode(format!(
                "--from `{position}` is not `now`, `earliest` or a position (a whole number)"
            ))
        })?),
    };
    let mut subscription = client.subscribe(name.unwrap_or(""), from, segments).await?;
    eprintln!(
        "subscribed from position {} (the stream keeps {} on, and is at {})",
        subscription.from, subscription.earliest, subscription.position
    );
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    loop {
        let frame = subscription.next().await?;
        let mut out = stdout.lock();
        let mut last = frame.through;
        for change in &frame.changes {
            if count.is_some_and(|n| printed >= n) {
                break;
            }
            let time = jiff::Timestamp::from_second(change.time as i64)
                .map(|t| t.to_string())
                .unwrap_or_default();
            let line = if json {
                serde_json::json!({
                    "position": change.position,
                    "time": time,
                    "customer": change.customer,
                    "segment": change.segment,
                    "kind": change.kind.name(),
                    "cause": change.cause.name(),
                    "event": (!change.event.is_empty()).then_some(&change.event),
                    "keys": change.keys,
                })
                .to_string()
            } else {
                let why = match change.event.as_str() {
                    "" => change.cause.name().to_string(),
                    event => format!("{} {event}", change.cause.name()),
                };
                let who = change.keys.first().map_or("(forgotten)", String::as_str);
                format!(
                    "{} {time} {} {} {who} ({why})",
                    change.position,
                    change.kind.name(),
                    change.segment
                )
            };
            let _ = writeln!(out, "{line}");
            printed += 1;
            last = change.position;
        }
        let _ = out.flush();
        drop(out);
        let done = count.is_some_and(|n| printed >= n);
        subscription
            .ack(if done { last } else { frame.through })
            .await?;
        if done {
            // Answered after the ACK is handled: it is stored before the process ends.
            return subscription.finish().await;
        }
    }
}
