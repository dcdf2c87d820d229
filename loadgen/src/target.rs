//! What the load is sent to: an omnia server over TCP (through `omnia::client`, as a
//! channel backend would), an engine in this process (no network, for the engine's own
//! ceiling), or Redis (the baseline; see `redis_target`).

use std::future::Future;
use std::sync::Arc;

use omnia::client::{Client, ClientError};
use omnia::engine::RawEvent;
use omnia::model::decision::{ArmAssignment, DecisionRequest, FeedbackKind, FeedbackTarget};
use omnia::model::experiment::ExperimentReport;
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

/// What a decision answered that the journeys' effect reads ([`crate::effect`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answered {
    /// The customer's experiment arms.
    pub arms: Vec<ArmAssignment>,
    /// The offers chosen, best first.
    pub offers: Vec<String>,
}

impl Answered {
    fn of(decision: omnia::model::decision::Decision) -> Answered {
        Answered {
            arms: decision.arms,
            offers: decision.offers.into_iter().map(|o| o.offer).collect(),
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

    /// A decision, with what [`crate::effect`] reads of its answer. By default
    /// [`Target::execute`], which answers nothing: a target without experiments.
    fn decide_answer(
        &self,
        request: DecisionRequest,
    ) -> impl Future<Output = Result<Answered, String>> + Send {
        async move {
            self.execute(Op::Decide(request))
                .await
                .map(|_| Answered::default())
        }
    }

    /// The experiment reports, read after a run; `None` from a target that has no
    /// experiments (Redis).
    fn experiments(
        &self,
    ) -> impl Future<Output = Result<Option<Vec<ExperimentReport>>, String>> + Send {
        async { Ok(None) }
    }
}

/// An omnia server, one pipelined connection per target.
pub struct OmniaTarget {
    client: Client,
}

impl OmniaTarget {
    /// Connects, over TLS with `tls`, authenticating with `token` when the server
    /// requires credentials.
    pub async fn connect(
        addr: &str,
        token: Option<String>,
        tls: Option<std::sync::Arc<omnia::tls::ClientConfig>>,
    ) -> Result<OmniaTarget, String> {
        let options = omnia::client::ClientOptions {
            token,
            tls,
            ..omnia::client::ClientOptions::default()
        };
        Client::connect_with(addr, options)
            .await
            .map(|client| OmniaTarget { client })
            .map_err(|e| e.to_string())
    }
}

impl Target for OmniaTarget {
    fn takes_bodies(&self) -> bool {
        true
    }

    async fn decide_answer(&self, request: DecisionRequest) -> Result<Answered, String> {
        self.client
            .decide(request)
            .await
            .map(Answered::of)
            .map_err(|e| e.to_string())
    }

    async fn experiments(&self) -> Result<Option<Vec<ExperimentReport>>, String> {
        self.client
            .experiments()
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }

    async fn execute(&self, op: Op) -> Result<u64, String> {
        let c = &self.client;
        match op {
            Op::IngestBody(body, _) => acknowledged(c.ingest_body(body).await),
            Op::Ingest(events) => acknowledged(c.ingest(events).await),
            Op::Decide(request) => self.decide_answer(request).await.map(|_| 1),
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

/// An omnia server started inside this process on an ephemeral port, its HTTP edge on
/// another: a benchmark (or a test) in one command. Returns the binary protocol's
/// address and the HTTP API's; send on the returned sender to stop both.
pub async fn spawn_server(
    config: omnia::config::Config,
) -> std::io::Result<(String, String, tokio::sync::oneshot::Sender<()>)> {
    spawn_server_on(config, Arc::new(omnia::clock::SystemClock)).await
}

/// [`spawn_server`] with the engine on `clock` (the run's simulated time, say).
pub async fn spawn_server_on(
    config: omnia::config::Config,
    clock: Arc<dyn omnia::clock::Clock>,
) -> std::io::Result<(String, String, tokio::sync::oneshot::Sender<()>)> {
    let node = Arc::new(Node::new(config, clock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let shared = Arc::new(omnia::server::Shared::new(
        node,
        omnia::server::Limits::default(),
    ));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = http.local_addr()?.to_string();
    let edge = omnia::http::Edge::new(omnia::http::HttpLimits::default());
    edge.ready(shared.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(omnia::http::run(http, edge, async move {
        let _ = http_stopped.await;
    }));
    tokio::spawn(omnia::server::run(listener, shared, async move {
        let _ = stopped.await;
        let _ = stop_http.send(());
    }));
    Ok((addr, http_addr, stop))
}

/// The node in this process: what omnia does without the network.
pub struct InProcessTarget {
    pub node: Arc<Node>,
}

impl Target for InProcessTarget {
    async fn decide_answer(&self, request: DecisionRequest) -> Result<Answered, String> {
        self.node
            .decide(&request)
            .map(Answered::of)
            .map_err(|e| e.to_string())
    }

    async fn experiments(&self) -> Result<Option<Vec<ExperimentReport>>, String> {
        Ok(Some(self.node.experiment_reports(None)))
    }

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
                    omnia::protocol::IngestBatch::decode(&body, omnia::protocol::Layout::V2)
                        .map_err(|e| e.to_string())?;
                let mut applied = 0;
                for event in batch.iter() {
                    e.ingest(&event).map_err(|e| e.to_string())?;
                    applied += 1;
                }
                Ok(applied)
            }
            Op::Decide(request) => self.decide_answer(request).await.map(|_| 1),
            Op::Feedback(kind, target) => match e.feedback(kind, &target) {
                Ok(_) => Ok(1),
                Err(omnia::decide::DecideError::BudgetSpent { .. }) => Ok(0),
                Err(e) => Err(e.to_string()),
            },
            Op::Query(q) => e.segment_count(&q).map(|_| 1).map_err(|e| e.to_string()),
        }
    }
}

/// An omnia server's HTTP API: ingest as Segment `/v1/batch` calls (gzipped when asked),
/// decisions, feedback and queries as the JSON endpoints. What a tracker or a backend
/// that cannot speak the binary protocol costs.
pub struct HttpTarget {
    client: reqwest::Client,
    base: String,
    gzip: bool,
    /// Message ids: unique per event of this process.
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `Bearer <token>`, for a server that requires credentials.
    authorization: Option<String>,
}

impl HttpTarget {
    /// A target for `http://{addr}`; targets made from one `ids` share its message ids.
    pub fn new(
        addr: &str,
        gzip: bool,
        ids: std::sync::Arc<std::sync::atomic::AtomicU64>,
        token: Option<&str>,
    ) -> HttpTarget {
        HttpTarget {
            client: {
                omnia::tls::install_crypto_provider();
                reqwest::Client::new()
            },
            base: format!("http://{addr}"),
            gzip,
            next_id: ids,
            authorization: token.map(|t| format!("Bearer {t}")),
        }
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<serde_json::Value, String> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let body = if self.gzip {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            gz.write_all(&body).map_err(|e| e.to_string())?;
            request = request.header("content-encoding", "gzip");
            gz.finish().map_err(|e| e.to_string())?
        } else {
            body
        };
        Self::answer(request.body(body)).await
    }

    async fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        Self::answer(request).await
    }

    /// The JSON of a successful answer; anything else as an error with its status.
    async fn answer(request: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("{status}: not JSON ({e})"))?;
        if !status.is_success() {
            return Err(format!("{status}: {value}"));
        }
        Ok(value)
    }

    /// Events as a Segment batch: `user:` and `anon:` keys as `userId` and
    /// `anonymousId`, other keys in omnia's `keys` extension.
    fn batch(&self, events: &[RawEvent]) -> Vec<u8> {
        let first = self
            .next_id
            .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let calls: Vec<serde_json::Value> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut call = serde_json::json!({
                    "type": "track",
                    "event": e.event,
                    "timestamp": e.timestamp_ms,
                    "messageId": format!("lg-{}", first + i as u64),
                    "context": {"channel": e.channel},
                });
                let mut keys = Vec::new();
                for key in &e.keys {
                    match key.split_once(':') {
                        Some(("user", id)) if call.get("userId").is_none() => {
                            call["userId"] = id.into()
                        }
                        Some(("anon", id)) if call.get("anonymousId").is_none() => {
                            call["anonymousId"] = id.into()
                        }
                        _ => keys.push(key.clone()),
                    }
                }
                if !keys.is_empty() {
                    call["keys"] = keys.into();
                }
                let scalar =
                    |v: &omnia::model::RawValue| serde_json::to_value(v).unwrap_or_default();
                if !e.properties.is_empty() {
                    call["properties"] = e
                        .properties
                        .iter()
                        .map(|(n, v)| (n.clone(), scalar(v)))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
                if !e.attributes.is_empty() {
                    call["traits"] = e
                        .attributes
                        .iter()
                        .map(|(n, v)| (n.clone(), scalar(v)))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
                call
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "batch": calls })).unwrap_or_default()
    }
}

impl Target for HttpTarget {
    async fn decide_answer(&self, r: DecisionRequest) -> Result<Answered, String> {
        let context: serde_json::Map<String, serde_json::Value> = r
            .context
            .iter()
            .map(|(n, v)| (n.clone(), serde_json::to_value(v).unwrap_or_default()))
            .collect();
        let body = serde_json::json!({
            "key": r.key, "channel": r.channel, "top": r.top,
            "record": r.record_impression, "explain": r.explain, "context": context,
        });
        let answer = self
            .post("/v1/decide", body.to_string().into_bytes())
            .await?;
        let list = |name: &str| answer[name].as_array().cloned().unwrap_or_default();
        Ok(Answered {
            arms: list("arms")
                .iter()
                .filter_map(|a| {
                    Some(ArmAssignment {
                        experiment: a["experiment"].as_str()?.to_string(),
                        arm: a["arm"].as_str()?.to_string(),
                    })
                })
                .collect(),
            offers: list("offers")
                .iter()
                .filter_map(|o| Some(o["offer"].as_str()?.to_string()))
                .collect(),
        })
    }

    async fn experiments(&self) -> Result<Option<Vec<ExperimentReport>>, String> {
        let stats = self.get("/v1/stats?experiments=true").await?;
        serde_json::from_value(stats["experiments"].clone())
            .map(Some)
            .map_err(|e| format!("/v1/stats: the experiments are not a report list ({e})"))
    }

    async fn execute(&self, op: Op) -> Result<u64, String> {
        match op {
            Op::Ingest(events) => {
                let answer = self.post("/v1/batch", self.batch(&events)).await?;
                let rejected = answer["rejected"].as_array().map_or(0, Vec::len);
                if rejected > 0 {
                    return Err(format!(
                        "{rejected} of the batch rejected, the first: {}",
                        answer["rejected"][0]
                    ));
                }
                Ok(answer["accepted"].as_u64().unwrap_or(0))
            }
            Op::IngestBody(..) => Err("the HTTP target takes events, not INGEST bodies".into()),
            Op::Decide(r) => self.decide_answer(r).await.map(|_| 1),
            Op::Feedback(kind, target) => {
                let body = match target {
                    omnia::model::decision::FeedbackTarget::Decision { decision_id, offer } => {
                        serde_json::json!({
                            "kind": kind.name(), "decision_id": decision_id.to_string(), "offer": offer,
                        })
                    }
                    omnia::model::decision::FeedbackTarget::Customer {
                        key,
                        offer,
                        channel,
                    } => serde_json::json!({
                        "kind": kind.name(), "key": key, "offer": offer, "channel": channel,
                    }),
                };
                match self
                    .post("/v1/feedback", body.to_string().into_bytes())
                    .await
                {
                    Ok(_) => Ok(1),
                    // A spent budget is the server answering correctly, not a failure.
                    Err(e) if e.contains("BUDGET_SPENT") => Ok(0),
                    Err(e) => Err(e),
                }
            }
            Op::Query(q) => {
                let body = serde_json::json!({ "query": q });
                self.post("/v1/segments/query", body.to_string().into_bytes())
                    .await
                    .map(|_| 1)
            }
        }
    }
}
