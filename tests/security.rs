//! Who may do what, end to end: every operation of the binary protocol and every HTTP
//! endpoint, for every role, with no credential, a wrong one and the right one; key
//! rotation by reload; protected mode; `omnia credentials` and `omnia ctl --token`.

mod common;

use bytes::Bytes;
use common::binary::OMNIA;
use common::raw::Raw;
use common::{TempDir, TestServer, START_MS};
use omnia::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
use omnia::model::RawEvent;
use omnia::protocol::{opcode, ErrorCode, Frame, Request, Response};
use omnia::security::{CredentialsFile, Role, Token};

/// A credentials file with one principal per role (named after it) and one with all
/// four; the tokens by principal name.
fn credentials(dir: &TempDir) -> (std::path::PathBuf, Vec<(String, Token)>) {
    let mut file = CredentialsFile::default();
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let token = file
            .add(
                role.name(),
                &[role.name().to_string()],
                "2026-12-03T10:00:00Z",
            )
            .unwrap();
        tokens.push((role.name().to_string(), token));
    }
    let all: Vec<String> = Role::ALL.iter().map(|r| r.name().to_string()).collect();
    let token = file.add("all", &all, "2026-12-03T10:00:00Z").unwrap();
    tokens.push(("all".into(), token));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("credentials.toml");
    file.save(&path).unwrap();
    (path, tokens)
}

/// One request of each operation that needs a role, with the role it needs.
fn operations() -> Vec<(Role, Request)> {
    vec![
        (
            Role::Ingest,
            Request::Ingest {
                events: vec![RawEvent::new("page_view", "web", START_MS).key("anon:sec")],
            },
        ),
        (
            Role::Ingest,
            Request::IngestJson {
                json: Bytes::from_static(br#"{"type":"page","anonymousId":"sec-json"}"#),
            },
        ),
        (
            Role::Decide,
            Request::Profile {
                key: "anon:sec".into(),
            },
        ),
        (
            Role::Decide,
            Request::Decide(DecisionRequest {
                key: "anon:sec".into(),
                channel: "web".into(),
                top: 1,
                record_impression: false,
                explain: false,
                context: vec![],
            }),
        ),
        (
            Role::Decide,
            Request::Feedback {
                kind: FeedbackKind::Click,
                target: FeedbackTarget::Decision {
                    decision_id: 1,
                    offer: "none".into(),
                },
            },
        ),
        (
            Role::Read,
            Request::SegmentCount {
                query: "email_reachable".into(),
            },
        ),
        (
            Role::Read,
            Request::SegmentMembers {
                query: "email_reachable".into(),
                cursor: 0,
                limit: 10,
            },
        ),
        (
            Role::Read,
            Request::SegmentContains {
                segment: "email_reachable".into(),
                key: "anon:sec".into(),
            },
        ),
        (
            Role::Read,
            Request::Stats {
                offers: false,
                drift: false,
                triggers: false,
                experiments: false,
            },
        ),
        (Role::Admin, Request::Reload),
        (
            Role::Admin,
            Request::Forget {
                key: "anon:nobody".into(),
            },
        ),
        (Role::Admin, Request::ForgetStatus { erasure_id: 1 }),
        (
            Role::Admin,
            Request::Export {
                key: "anon:sec".into(),
            },
        ),
    ]
}

/// The error code of a reply, `None` for a success.
fn code(frame: &Frame) -> Option<u16> {
    match Response::decode(frame.opcode, &frame.body).unwrap() {
        Response::Error { code, .. } => Some(code),
        _ => None,
    }
}

fn message(frame: &Frame) -> String {
    match Response::decode(frame.opcode, &frame.body).unwrap() {
        Response::Error { message, .. } => message,
        other => format!("{other:?}"),
    }
}

async fn auth(raw: &mut Raw, token: &str) -> Frame {
    let body = Request::Auth {
        token: token.into(),
    }
    .encode()
    .unwrap();
    raw.request(opcode::AUTH, 2, body).await
}

const AUTH_CODES: [u16; 2] = [
    ErrorCode::Unauthenticated as u16,
    ErrorCode::Forbidden as u16,
];

#[tokio::test]
async fn every_binary_operation_for_every_role_and_credential() {
    let dir = TempDir::new("security", "binary");
    let (path, tokens) = credentials(&dir);
    let server = TestServer::secured(&path).await;
    let operations = operations();

    // No credential: HELLO and PING work, everything else is UNAUTHENTICATED.
    let mut raw = Raw::greeted(&server.addr).await;
    raw.still_alive().await;
    for (id, (role, request)) in operations.iter().enumerate() {
        let reply = raw
            .request(request.opcode(), 10 + id as u32, request.encode().unwrap())
            .await;
        assert_eq!(
            code(&reply),
            Some(ErrorCode::Unauthenticated as u16),
            "{request:?}"
        );
        let text = message(&reply);
        assert!(
            text.contains(&format!("the `{}` role", role.name())),
            "{text}"
        );
    }

    // A wrong credential: AUTH refused, and the connection is still unauthenticated.
    let mut wrong = tokens[0].1.clone();
    wrong.secret = "0".repeat(64);
    for presented in [wrong.text(), "om_ffffffff_00".into(), "write-key".into()] {
        let reply = auth(&mut raw, &presented).await;
        assert_eq!(
            code(&reply),
            Some(ErrorCode::Unauthenticated as u16),
            "{presented}"
        );
        assert!(
            !message(&reply).contains(&presented),
            "the secret is not echoed"
        );
    }
    let (_, stats) = &operations[8];
    let reply = raw
        .request(stats.opcode(), 30, stats.encode().unwrap())
        .await;
    assert_eq!(code(&reply), Some(ErrorCode::Unauthenticated as u16));

    // The right credential: allowed where the principal has the role, FORBIDDEN else.
    for (name, token) in &tokens {
        let mut raw = Raw::greeted(&server.addr).await;
        let reply = auth(&mut raw, &token.text()).await;
        let Response::Authenticated { principal, .. } =
            Response::decode(reply.opcode, &reply.body).unwrap()
        else {
            panic!("{name}: {}", message(&reply))
        };
        assert_eq!(&principal, name);
        for (id, (role, request)) in operations.iter().enumerate() {
            let reply = raw
                .request(request.opcode(), 40 + id as u32, request.encode().unwrap())
                .await;
            let allowed = name == "all" || name == role.name();
            if allowed {
                // Allowed: whatever it answers, it is not an authentication error
                // (RELOAD on the embedded config is RELOAD_REFUSED, say).
                assert!(
                    !code(&reply).is_some_and(|c| AUTH_CODES.contains(&c)),
                    "{name} {request:?}: {}",
                    message(&reply)
                );
            } else {
                assert_eq!(
                    code(&reply),
                    Some(ErrorCode::Forbidden as u16),
                    "{name} {request:?}"
                );
                let text = message(&reply);
                assert!(
                    text.contains(&format!(
                        "needs the `{}` role; principal `{name}` has {name}",
                        role.name()
                    )),
                    "{text}"
                );
            }
        }
    }
    // What the allowed ones did, they did: the ingest principal's events are there.
    assert!(server.node.profile("anon:sec").is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn every_http_endpoint_for_every_role_and_credential() {
    let dir = TempDir::new("security", "http");
    let (path, tokens) = credentials(&dir);
    let server = TestServer::secured(&path).await;
    let base = server.http.clone().unwrap();
    let http = common::http_client();
    let page = r#"{"type":"page","anonymousId":"h"}"#;
    let endpoints: Vec<(Role, reqwest::Method, &str, Option<&str>)> = vec![
        (
            Role::Ingest,
            reqwest::Method::POST,
            "/v1/batch",
            Some(r#"{"batch":[{"type":"page","anonymousId":"h"}]}"#),
        ),
        (Role::Ingest, reqwest::Method::POST, "/v1/page", Some(page)),
        (
            Role::Ingest,
            reqwest::Method::POST,
            "/v1/track",
            Some(r#"{"event":"page_view","anonymousId":"h"}"#),
        ),
        (
            Role::Ingest,
            reqwest::Method::POST,
            "/v1/identify",
            Some(r#"{"userId":"h"}"#),
        ),
        (
            Role::Ingest,
            reqwest::Method::POST,
            "/v1/screen",
            Some(page),
        ),
        (
            Role::Ingest,
            reqwest::Method::POST,
            "/v1/alias",
            Some(r#"{"userId":"h","previousId":"h2"}"#),
        ),
        (
            Role::Ingest,
            reqwest::Method::POST,
            "/v1/group",
            Some(r#"{"userId":"h","groupId":"g"}"#),
        ),
        (
            Role::Decide,
            reqwest::Method::POST,
            "/v1/decide",
            Some(r#"{"key":"anon:h","channel":"web"}"#),
        ),
        (
            Role::Decide,
            reqwest::Method::POST,
            "/v1/feedback",
            Some(r#"{"kind":"click","decision_id":"1","offer":"x"}"#),
        ),
        (
            Role::Decide,
            reqwest::Method::GET,
            "/v1/profiles/anon:h",
            None,
        ),
        (
            Role::Read,
            reqwest::Method::GET,
            "/v1/segments/email_reachable/count",
            None,
        ),
        (
            Role::Read,
            reqwest::Method::GET,
            "/v1/segments/email_reachable/members",
            None,
        ),
        (
            Role::Read,
            reqwest::Method::POST,
            "/v1/segments/query",
            Some(r#"{"query":"email_reachable"}"#),
        ),
        (Role::Read, reqwest::Method::GET, "/v1/stats", None),
        (
            Role::Admin,
            reqwest::Method::DELETE,
            "/v1/profiles/anon:nobody",
            None,
        ),
        (
            Role::Admin,
            reqwest::Method::GET,
            "/v1/profiles/anon:h/export",
            None,
        ),
    ];
    let send = |method: reqwest::Method, path: &str, body: Option<&str>, auth: Option<String>| {
        let mut request = http.request(method, format!("{base}{path}"));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let www = response.headers().get("www-authenticate").is_some();
            let text = response.text().await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            (status, www, body)
        }
    };
    // Health probes need nothing.
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(send(reqwest::Method::GET, probe, None, None).await.0, 200);
    }
    let basic = |token: &str| {
        format!(
            "Basic {}",
            <base64ct::Base64 as base64ct::Encoding>::encode_string(format!("{token}:").as_bytes())
        )
    };
    let mut wrong = tokens[0].1.clone();
    wrong.secret = "0".repeat(64);
    for (role, method, path, body) in &endpoints {
        // No credential, a wrong one, a malformed header: 401 with WWW-Authenticate.
        for auth in [
            None,
            Some(basic(&wrong.text())),
            Some("Digest abc".to_string()),
        ] {
            let (status, www, answer) = send(method.clone(), path, *body, auth.clone()).await;
            assert_eq!((status, www), (401, true), "{path} {auth:?}: {answer}");
            assert_eq!(answer["code"], "UNAUTHENTICATED", "{answer}");
        }
        // The right one, as Basic (an SDK's write key) and as Bearer.
        for (name, token) in &tokens {
            let allowed = name == "all" || name == role.name();
            for auth in [basic(&token.text()), format!("Bearer {}", token.text())] {
                let (status, _, answer) = send(method.clone(), path, *body, Some(auth)).await;
                if allowed {
                    assert!(
                        ![401, 403].contains(&status),
                        "{name} {path}: {status} {answer}"
                    );
                } else {
                    assert_eq!(status, 403, "{name} {path}: {answer}");
                    assert_eq!(answer["code"], "FORBIDDEN");
                    let text = answer["message"].as_str().unwrap();
                    assert!(
                        text.contains(&format!("needs the `{}` role", role.name())),
                        "{text}"
                    );
                }
            }
        }
    }
    assert!(server.node.profile("anon:h").is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn a_rotated_key_works_and_a_revoked_one_stops_at_the_reload() {
    let dir = TempDir::new("security", "rotation");
    let (path, tokens) = credentials(&dir);
    let server = TestServer::secured(&path).await;
    let ingest = &tokens[0].1;
    let stats = Request::Stats {
        offers: false,
        drift: false,
        triggers: false,
        experiments: false,
    };
    // A connection of the `read` principal, authenticated before the rotation.
    let mut reader = Raw::greeted(&server.addr).await;
    assert_eq!(code(&auth(&mut reader, &tokens[2].1.text()).await), None);

    // Rotate the ingest principal's key: a second secret, then the first revoked.
    let mut file = CredentialsFile::load(&path).unwrap();
    let second = file.add("ingest", &[], "2026-12-04T10:00:00Z").unwrap();
    file.revoke("ingest", &ingest.id).unwrap();
    // And the read principal loses its role for admin... its roles become `ingest`.
    file.principals
        .iter_mut()
        .find(|p| p.name == "read")
        .unwrap()
        .roles = vec!["ingest".into()];
    file.save(&path).unwrap();
    // Not yet read: the old key still works until a reload.
    let mut old = Raw::greeted(&server.addr).await;
    assert_eq!(code(&auth(&mut old, &ingest.text()).await), None);
    server.shared.reload_credentials().unwrap();
    let mut again = Raw::greeted(&server.addr).await;
    assert_eq!(
        code(&auth(&mut again, &ingest.text()).await),
        Some(ErrorCode::Unauthenticated as u16)
    );
    assert_eq!(code(&auth(&mut again, &second.text()).await), None);
    // The connection authenticated with the revoked secret is ended at its next request.
    let events = Request::Ingest {
        events: vec![RawEvent::new("page_view", "web", START_MS).key("anon:rot")],
    };
    let reply = old
        .request(opcode::INGEST, 3, events.encode().unwrap())
        .await;
    assert_eq!(code(&reply), Some(ErrorCode::Unauthenticated as u16));
    assert!(
        message(&reply).contains("was revoked"),
        "{}",
        message(&reply)
    );
    // The reader's session takes its principal's new roles.
    let reply = reader
        .request(opcode::STATS, 4, stats.encode().unwrap())
        .await;
    assert_eq!(
        code(&reply),
        Some(ErrorCode::Forbidden as u16),
        "{}",
        message(&reply)
    );
    let reply = reader
        .request(opcode::INGEST, 5, events.encode().unwrap())
        .await;
    assert_eq!(code(&reply), None, "{}", message(&reply));
    server.shutdown().await;
}

#[test]
fn without_credentials_omnia_refuses_to_listen_beyond_loopback() {
    let output = std::process::Command::new(OMNIA)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--no-http",
            "--no-metrics",
        ])
        .args(["--data-dir", "/nonexistent/never-created"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--listen 0.0.0.0:0 is reachable beyond this machine")
            && stderr.contains("omnia credentials add")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    // The HTTP listener is checked the same way.
    let output = std::process::Command::new(OMNIA)
        .args(["serve", "--http-listen", "[::]:0", "--no-metrics"])
        .args(["--data-dir", "/nonexistent/never-created"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--http-listen [::]:0 is reachable beyond this machine"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_command_line_adds_a_principal_whose_token_ctl_uses() {
    use common::binary::{spawn_listening, wait_ready};
    let dir = TempDir::new("security", "cli");
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("creds.toml");
    let added = std::process::Command::new(OMNIA)
        .args([
            "credentials",
            "add",
            "ops",
            "--role",
            "read",
            "--role",
            "admin",
            "--file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let token = String::from_utf8(added.stdout).unwrap().trim().to_string();
    let parsed = Token::parse(&token).unwrap_or_else(|| panic!("{token}"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&parsed.secret), "the file holds no secret");
    let listed = std::process::Command::new(OMNIA)
        .args(["credentials", "list", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("ops") && listed.contains("read, admin") && listed.contains(&parsed.id),
        "{listed}"
    );

    // The server, its log in a file, requiring the credentials.
    let log_path = dir.0.join("server.log");
    let mut command = std::process::Command::new(OMNIA);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .arg("--credentials")
        .arg(&file);
    let (mut served, listening) = spawn_listening(command, &log_path);
    let (addr, http) = (listening.binary, listening.http.unwrap());
    let metrics = listening.metrics.unwrap();
    wait_ready(&http).await;
    let ctl = |token: Option<&str>| {
        let mut command = std::process::Command::new(OMNIA);
        command.args(["ctl", "--addr", &addr, "--json", "stats"]);
        command.env_remove("OMNIA_TOKEN");
        if let Some(token) = token {
            command.env("OMNIA_TOKEN", token);
        }
        command.output().unwrap()
    };
    let refused = ctl(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let allowed = ctl(Some(&token));
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    // /metrics wants a `read` principal too: a scraper's bearer token.
    let scrape = |token: Option<&str>| {
        let mut request = common::http_client().get(format!("http://{metrics}/metrics"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = scrape(None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = scrape(Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("omnia_requests_total"), "{body}");
    served.kill().unwrap();
    served.wait().unwrap();
    // Who authenticated is logged; the secret never is.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("authenticated") && log.contains("principal=ops"),
        "{log}"
    );
    assert!(!log.contains(&parsed.secret), "{log}");
}

#[tokio::test]
async fn the_config_can_name_the_credentials_file() {
    use common::binary::{serve_with, wait_ready};
    let dir = TempDir::new("security", "config");
    let (_, tokens) = credentials(&dir);
    let config = dir.0.join("shop.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[security]\ncredentials = \"credentials.toml\"\n",
            omnia::config::DEFAULT_CONFIG
        ),
    )
    .unwrap();
    let served = serve_with(
        dir.0.join("data"),
        &["--config", config.to_str().unwrap(), "--no-metrics"],
    );
    wait_ready(&served.http).await;
    let mut raw = Raw::greeted(&served.addr).await;
    let stats = Request::Stats {
        offers: false,
        drift: false,
        triggers: false,
        experiments: false,
    };
    let reply = raw.request(opcode::STATS, 5, stats.encode().unwrap()).await;
    assert_eq!(code(&reply), Some(ErrorCode::Unauthenticated as u16));
    let read = &tokens[2].1;
    assert_eq!(code(&auth(&mut raw, &read.text()).await), None);
    let reply = raw.request(opcode::STATS, 6, stats.encode().unwrap()).await;
    assert_eq!(code(&reply), None, "{}", message(&reply));
}

#[tokio::test]
async fn a_beacon_without_headers_authenticates_with_the_write_key_in_its_body() {
    let dir = TempDir::new("security", "beacon");
    let (path, tokens) = credentials(&dir);
    let server = TestServer::secured(&path).await;
    let base = server.http.clone().unwrap();
    let post = |path: &str, body: serde_json::Value| {
        let request = common::http_client()
            .post(format!("{base}{path}"))
            // What navigator.sendBeacon sends: no Authorization, text/plain.
            .header("content-type", "text/plain")
            .body(body.to_string());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (
                status,
                serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
            )
        }
    };
    let (ingest, read) = (&tokens[0].1, &tokens[2].1);
    let batch = |key: Option<String>| {
        let mut body = serde_json::json!({"batch": [{"type": "page", "anonymousId": "beacon"}]});
        if let Some(key) = key {
            body["writeKey"] = key.into();
        }
        body
    };
    let (status, answer) = post("/v1/batch", batch(Some(ingest.text()))).await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, serde_json::json!(1)),
        "{answer}"
    );
    let (status, answer) = post(
        "/v1/page",
        serde_json::json!({"anonymousId": "beacon", "writeKey": ingest.text()}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = post(
        "/v1/group",
        serde_json::json!({"userId": "u", "groupId": "g", "writeKey": ingest.text()}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // No key, a wrong one, one without the ingest role: refused, nothing applied.
    let (status, answer) = post("/v1/batch", batch(None)).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no `writeKey` in the body"),
        "{answer}"
    );
    let (status, _) = post("/v1/group", serde_json::json!({"groupId": "g"})).await;
    assert_eq!(status, 401);
    let mut wrong = ingest.clone();
    wrong.secret = "0".repeat(64);
    assert_eq!(post("/v1/batch", batch(Some(wrong.text()))).await.0, 401);
    assert_eq!(post("/v1/batch", batch(Some(read.text()))).await.0, 403);
    assert_eq!(
        server
            .node
            .profile("anon:beacon")
            .unwrap()
            .aggregate("count(page_view on web, 1h)"),
        Some(2.0)
    );
    server.shutdown().await;
}
