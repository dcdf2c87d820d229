//! What the load is sent to: an omnia server over TCP (through `omnia::client`, as a
//! channel backend would), an engine in this process (no network, for the engine's own
//! ceiling), or Redis (the baseline; see `redis_target`).

use std::future::Future;
use std::sync::Arc;

use omnia::client::{Client, ClientError};
use omnia::engine::RawEvent;
use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
use omnia::node::Node;
use omnia::protocol::ErrorCode;

/// One request of a workload.
#[derive(Debug, Clone)]
pub enum Op {
    Ingest(Vec<RawEvent>),
    /// An INGEST body already written, and how many events it holds.
    IngestBody(bytes::Bytes, u32),
    Decide(DecisionRequest),
    Feedback(FeedbackKind, FeedbackTarget),
    /// A segment count or set-algebra query.
    Query(String),
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Ingest(_) | Op::IngestBody(..) => OpKind::Ingest,
            Op::Decide(_) => OpKind::Decide,
            Op::Feedback(..) => OpKind::Feedback,
            Op::Query(_) => OpKind::Query,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Ingest,
    Decide,
    Feedback,
    Query,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [
        OpKind::Ingest,
        OpKind::Decide,
        OpKind::Feedback,
        OpKind::Query,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Ingest => "ingest",
            OpKind::Decide => "decide",
            OpKind::Feedback => "feedback",
            OpKind::Query => "query",
        }
    }
}

/// Something that executes ops. `Ok(units)`: events applied for an ingest batch, 1
/// otherwise. An error is counted, never hidden: a rejected event in a batch is one.
pub trait Target: Send + Sync + 'static {
    fn execute(&self, op: Op) -> impl Future<Output = Result<u64, String>> + Send;

    /// Whether ingest should come as [`Op::IngestBody`] (written without allocating per
    /// event) rather than as [`RawEvent`]s.
    fn takes_bodies(&self) -> bool {
        false
    }
}

/// An omnia server, one pipelined connection per target.
pub struct OmniaTarget {
    client: Client,
}

impl OmniaTarget {
    pub async fn connect(addr: &str) -> Result<OmniaTarget, String> {
        Client::connect(addr)
            .await
            .map(|client| OmniaTarget { client })
            .map_err(|e| e.to_string())
    }
}

impl Target for OmniaTarget {
    fn takes_bodies(&self) -> bool {
        true
    }

    async fn execute(&self, op: Op) -> Result<u64, String> {
        let c = &self.client;
        match op {
            Op::IngestBody(body, _) => acknowledged(c.ingest_body(body).await),
            Op::Ingest(events) => acknowledged(c.ingest(events).await),
            Op::Decide(request) => c
                .decide(request)
                .await
                .map(|_| 1)
                .map_err(|e| e.to_string()),
            Op::Feedback(kind, target) => match c.feedback(kind, target).await {
                Ok(_) => Ok(1),
                // A spent budget is the server answering correctly, not a failure.
                Err(ClientError::Server {
                    code: Some(ErrorCode::BudgetSpent),
                    ..
                }) => Ok(0),
                Err(e) => Err(e.to_string()),
            },
            Op::Query(q) => c
                .segment_count(&q)
                .await
                .map(|_| 1)
                .map_err(|e| e.to_string()),
        }
    }
}

/// An ingest acknowledgement as units applied; any rejected event makes it an error.
fn acknowledged(ack: Result<omnia::client::Ingested, ClientError>) -> Result<u64, String> {
    let ack = ack.map_err(|e| e.to_string())?;
    match ack.rejected.first() {
        None => Ok(ack.accepted as u64),
        Some(r) => Err(format!(
            "{} of the batch rejected, the first: {}",
            ack.rejected.len(),
            r.message
        )),
    }
}

/// An omnia server started inside this process on an ephemeral port: a benchmark (or a
/// test) in one command. Send on the returned sender to stop it.
pub async fn spawn_server(
    config: omnia::config::Config,
) -> std::io::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let node = Arc::new(Node::new(config, Arc::new(omnia::clock::SystemClock)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let shared = Arc::new(omnia::server::Shared::new(
        node,
        omnia::server::Limits::default(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(omnia::server::run(listener, shared, async move {
        let _ = stopped.await;
    }));
    Ok((addr, stop))
}

/// The node in this process: what omnia does without the network.
pub struct InProcessTarget {
    pub node: Arc<Node>,
}

impl Target for InProcessTarget {
    async fn execute(&self, op: Op) -> Result<u64, String> {
        let e = &self.node;
        match op {
            Op::Ingest(events) => {
                let mut applied = 0;
                let mut first_error = None;
                for event in &events {
                    match e.ingest(event) {
                        Ok(_) => applied += 1,
                        Err(err) => {
                            first_error.get_or_insert(err.to_string());
                        }
                    }
                }
                match first_error {
                    None => Ok(applied),
                    Some(err) => Err(err),
                }
            }
            Op::IngestBody(body, _) => {
                let batch =
                    omnia::protocol::IngestBatch::decode(&body).map_err(|e| e.to_string())?;
                let mut applied = 0;
                for event in batch.iter() {
                    e.ingest(&event).map_err(|e| e.to_string())?;
                    applied += 1;
                }
                Ok(applied)
            }
            Op::Decide(request) => e.decide(&request).map(|_| 1).map_err(|e| e.to_string()),
            Op::Feedback(kind, target) => match e.feedback(kind, &target) {
                Ok(_) => Ok(1),
                Err(omnia::decide::DecideError::BudgetSpent { .. }) => Ok(0),
                Err(e) => Err(e.to_string()),
            },
            Op::Query(q) => e.segment_count(&q).map(|_| 1).map_err(|e| e.to_string()),
        }
    }
}
