//! Criterion benchmarks of the protocol paths: decoding an INGEST batch, parsing JSON
//! ingest, and pipelined round trips over TCP to a server in this process.
//!
//! Run: `cargo bench --bench protocol`. Results are in docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use omnia::client::Client;
use omnia::clock::ManualClock;
use omnia::config::Config;
use omnia::model::{EventView, RawEvent};
use omnia::node::Node;
use omnia::protocol::{Frame, IngestBatch, Layout, Request, DEFAULT_MAX_FRAME};
use omnia::server::{Limits, Shared};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW_MS: i64 = 1_772_445_600_000;

fn batch(n: usize) -> Vec<RawEvent> {
    (0..n)
        .map(|i| match i % 4 {
            0 => RawEvent::new("page_view", "web", NOW_MS)
                .key(&format!("anon:c-{i}"))
                .prop("url", "/c/shoes")
                .prop("campaign", "spring"),
            1 => RawEvent::new("product_view", "app", NOW_MS)
                .key(&format!("anon:c-{i}"))
                .prop("sku", "SHOE-42")
                .prop("category", "shoes")
                .prop("price", 120.0),
            2 => RawEvent::new("add_to_cart", "web", NOW_MS)
                .key(&format!("user:{i}"))
                .prop("sku", "SHOE-42")
                .prop("price", 120.0)
                .prop("quantity", 1.0),
            _ => RawEvent::new("purchase", "store", NOW_MS)
                .key(&format!("user:{i}"))
                .key(&format!("card:{i}"))
                .prop("amount", 120.0)
                .prop("category", "shoes"),
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let request = Request::Ingest {
        events: batch(1000),
    };
    let mut wire = BytesMut::new();
    Frame::new(request.opcode(), 1, request.encode().unwrap()).write_to(&mut wire);
    let wire = wire.freeze();
    let mut group = c.benchmark_group("protocol");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function(
        "decode a 1,000-event INGEST frame (read in place, every field)",
        |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let frame = Frame::parse(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
                let batch =
                    IngestBatch::decode(&frame.body, Layout::of_protocol(frame.version)).unwrap();
                // Touch every field, as resolving the events will.
                let mut touched = 0usize;
                for event in batch.iter() {
                    touched += event.event_type().len() + event.channel().len();
                    touched += event.keys().map(str::len).sum::<usize>();
                    touched += event
                        .properties()
                        .map(|(name, _)| name.len())
                        .sum::<usize>();
                }
                black_box(touched)
            })
        },
    );
    group.bench_function(
        "decode a 1,000-event INGEST frame (validate the batch)",
        |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let frame = Frame::parse(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
                black_box(
                    IngestBatch::decode(&frame.body, Layout::of_protocol(frame.version))
                        .unwrap()
                        .len(),
                )
            })
        },
    );
    group.bench_function("decode a 1,000-event INGEST frame into owned events", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let frame = Frame::parse(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
            black_box(Request::decode(frame.opcode, &frame.body).unwrap())
        })
    });

    let config = Config::embedded_default().unwrap();
    let json: String = (0..2000)
        .map(|i| match i % 3 {
            0 => format!("{{\"type\":\"page\",\"anonymousId\":\"c-{i}\",\"messageId\":\"m-{i}\",\"timestamp\":\"2026-03-02T10:00:00.000Z\",\"properties\":{{\"url\":\"/c/shoes?utm_source=flyer\",\"campaign\":\"spring-flyer\",\"referrer\":\"https://example.com/\"}},\"context\":{{\"channel\":\"web\"}}}}\n"),
            1 => format!("{{\"type\":\"track\",\"event\":\"product_view\",\"userId\":\"u-{i}\",\"messageId\":\"m-{i}\",\"timestamp\":\"2026-03-02T10:00:01.000Z\",\"properties\":{{\"sku\":\"SHOE-42\",\"category\":\"shoes\",\"price\":120.5}},\"context\":{{\"channel\":\"app\"}}}}\n"),
            _ => format!("{{\"type\":\"identify\",\"userId\":\"u-{i}\",\"anonymousId\":\"c-{i}\",\"messageId\":\"m-{i}\",\"timestamp\":\"2026-03-02T10:00:02.000Z\",\"traits\":{{\"email\":\"u{i}@example.com\",\"country\":\"NL\",\"email_opt_in\":true}},\"context\":{{\"channel\":\"app\"}}}}\n"),
        })
        .collect();
    let array = format!("[{}]", json.trim_end().replace('\n', ","));
    group.throughput(Throughput::Bytes(array.len() as u64));
    group.bench_function("parse JSON ingest (2,000 Segment events, array)", |b| {
        b.iter(|| {
            // The parser works in place, so each run parses a fresh copy (as INGEST_JSON
            // does; the HTTP edge parses the body it read).
            let mut body = array.as_bytes().to_vec();
            let events =
                omnia::server::cmd::ingest_json::parse(&config, &mut body, NOW_MS).unwrap();
            black_box(events.len());
        })
    });
    group.finish();
}

fn round_trips(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, client) = runtime.block_on(async {
        let engine = Arc::new(Node::new(
            Config::embedded_default().unwrap(),
            Arc::new(ManualClock::new(NOW_MS)),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared::new(engine, Limits::default()));
        tokio::spawn(omnia::server::run(
            listener,
            shared,
            std::future::pending::<()>(),
        ));
        let client = Client::connect(&addr).await.unwrap();
        for chunk in batch(10_000).chunks(1000) {
            client.ingest(chunk.to_vec()).await.unwrap();
        }
        (addr, client)
    });
    let _ = addr;
    let mut group = c.benchmark_group("round trips");
    let in_flight = 256;
    group.throughput(Throughput::Elements(in_flight as u64));
    group.bench_function("SEGMENT_CONTAINS, one connection, 256 in flight", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    let mut set = tokio::task::JoinSet::new();
                    for i in 0..in_flight {
                        let client = client.clone();
                        set.spawn(async move {
                            client
                                .segment_contains("new_visitors", &format!("anon:c-{}", i * 4))
                                .await
                                .unwrap()
                        });
                    }
                    while let Some(r) = set.join_next().await {
                        black_box(r.unwrap());
                    }
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = protocol;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(30);
    targets = decode, round_trips
}
criterion_main!(protocol);
