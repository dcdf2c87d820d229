//! An HTTP receiver on loopback for webhook tests: records every request, fails the
//! first ones on purpose.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct State {
    received: parking_lot::Mutex<Vec<Received>>,
    /// Requests still to answer 503.
    failures: parking_lot::Mutex<u32>,
}

pub struct Receiver {
    addr: std::net::SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver that answers its first `failures` requests 503, then 200.
    pub async fn start(failures: u32) -> Receiver {
        let state = Arc::new(State {
            failures: parking_lot::Mutex::new(failures),
            ..State::default()
        });
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = shared.clone();
                async move {
                    let body = serde_json::from_slice(&body).unwrap_or_else(|e| {
                        serde_json::json!({ "unparsed": String::from_utf8_lossy(&body), "error": e.to_string() })
                    });
                    state.received.lock().push(Received { headers, body });
                    let mut failures = state.failures.lock();
                    if *failures > 0 {
                        *failures -= 1;
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().clone()
    }

    /// Waits (at most 10 s) until `n` requests came; returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver got {} of {n} requests: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
