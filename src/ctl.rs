//! `omnia ctl`: a command-line client for a running server, built on `omnia::client`.
//!
//! Every command prints a readable table by default and JSON with `--json`, so it
//! serves both people at a terminal and scripts.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use omnia::client::{Client, ClientError};

#[derive(Args)]
pub struct CtlOptions {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7878", global = true)]
    addr: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
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
    /// Server counters and segment sizes.
    Stats,
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
    let client = Client::connect(&options.addr).await?;
    let json = options.json;
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
        CtlCommand::Stats => {
            let stats = client.stats().await?;
            if json {
                print_json(&stats);
            } else {
                println!("uptime           {:.1}s", stats.uptime_ms as f64 / 1000.0);
                println!("config version   {:08x}", stats.config_version);
                println!("customers        {}", stats.customers);
                println!("keys             {}", stats.keys);
                println!("events ingested  {}", stats.events_ingested);
                println!("events rejected  {}", stats.events_rejected);
                println!("merges           {}", stats.merges);
                println!("connections      {}", stats.connections);
                println!("segments:");
                for (name, n) in &stats.segments {
                    println!("  {name:<24} {n:>10}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
