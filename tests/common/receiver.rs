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
    scheme: &'static str,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl State {
    fn receive(&self, headers: HeaderMap, body: &[u8]) -> StatusCode {
        let body = serde_json::from_slice(body).unwrap_or_else(|e| {
            serde_json::json!({ "unparsed": String::from_utf8_lossy(body), "error": e.to_string() })
        });
        self.received.lock().push(Received { headers, body });
        let mut failures = self.failures.lock();
        if *failures > 0 {
            *failures -= 1;
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }
}

fn app(state: Arc<State>) -> axum::Router {
    axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move { state.receive(headers, &body) }
        }),
    )
}

impl Receiver {
    /// A receiver that answers its first `failures` requests 503, then 200.
    pub async fn start(failures: u32) -> Receiver {
        let state = Arc::new(State {
            failures: parking_lot::Mutex::new(failures),
            ..State::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            addr,
            scheme: "http",
            state,
            task,
        }
    }

    /// A receiver over TLS with the certificate and key in `tls` (answers 200).
    pub async fn start_tls(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Receiver {
        let state = Arc::new(State::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let app = app(state.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A handshake refused by the client (an untrusted certificate) ends here.
                    let Ok(stream) = acceptor.accept(socket).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            scheme: "https",
            state,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}/hook", self.scheme, self.addr)
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
