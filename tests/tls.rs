//! TLS on both listeners of the real `omnia serve`, with certificates made in the test
//! (rcgen): the Rust client and `omnia ctl` over TLS, HTTPS, mutual TLS refused without
//! a client certificate, and plaintext on a TLS port closed with a log line.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::binary::{serve_logging, OMNIA};
use common::pki::{pki, Pki};
use common::TempDir;
use omnia::client::{Client, ClientOptions};
use omnia::model::RawEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `omnia ctl` over TLS (with the client certificate if `identified`); its output, or
/// the test fails with its error.
fn ctl(addr: &str, pki: &Pki, identified: bool, args: &[&str]) -> String {
    let mut command = std::process::Command::new(OMNIA);
    command
        .args(["ctl", "--addr", addr, "--tls-ca"])
        .arg(&pki.ca);
    if identified {
        command
            .arg("--tls-cert")
            .arg(&pki.client_cert)
            .arg("--tls-key")
            .arg(&pki.client_key);
    }
    let out = command.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tls_options(config: Arc<tokio_rustls::rustls::ClientConfig>) -> ClientOptions {
    ClientOptions {
        tls: Some(config),
        connect_timeout: std::time::Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

/// `GET /healthz` over TLS, by hand: the status line.
async fn https_health(
    addr: &str,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = omnia::tls::server_name("localhost:1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn clients_ctl_and_https_speak_tls_and_plaintext_is_closed_with_a_log_line() {
    let dir = TempDir::new("tls", "serve");
    let pki = pki(&dir.0.join("pki"));
    let log = dir.0.join("server.log");
    let (cert, key) = (
        pki.server_cert.to_str().unwrap().to_string(),
        pki.server_key.to_str().unwrap().to_string(),
    );
    let served = serve_logging(
        dir.0.join("data"),
        &["--tls-cert", &cert, "--tls-key", &key, "--no-metrics"],
        Some(&log),
    );
    let addr = served.addr.replace("127.0.0.1", "localhost");
    let config = omnia::tls::client_config(&pki.ca, None).unwrap();

    // The Rust client, by name and by IP address.
    for addr in [addr.clone(), served.addr.clone()] {
        let client = Client::connect_with(&addr, tls_options(config.clone()))
            .await
            .unwrap();
        client.ping().await.unwrap();
        let ack = client
            .ingest(vec![
                RawEvent::new("page_view", "web", 1_772_445_600_000).key("anon:tls")
            ])
            .await
            .unwrap();
        assert_eq!(ack.accepted, 1);
    }

    // omnia ctl.
    let out = ctl(&addr, &pki, false, &["--json", "profile", "anon:tls"]);
    assert!(out.contains("anon:tls"), "{out}");

    // HTTPS on the HTTP listener.
    assert_eq!(
        https_health(&served.http, config.clone()).await.unwrap(),
        "HTTP/1.1 200 OK"
    );

    // A plaintext client is not served: the server closes its connection (no hang),
    // says why in its log, and goes on serving TLS clients.
    let plain = Client::connect_with(
        &served.addr,
        ClientOptions {
            connect_timeout: std::time::Duration::from_secs(5),
            request_timeout: std::time::Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
    .await;
    assert!(plain.is_err(), "a plaintext client got through");
    let mut raw = tokio::net::TcpStream::connect(&served.http).await.unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        raw.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_ok(), "plain HTTP on the HTTPS port was not closed");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    let client = Client::connect_with(&addr, tls_options(config))
        .await
        .unwrap();
    client.ping().await.unwrap();
    drop(served);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("TLS on the binary and HTTP listeners"),
        "{log}"
    );
    assert!(
        log.contains("closing a connection whose TLS handshake failed"),
        "{log}"
    );
    assert!(
        log.contains("closing an HTTP connection whose TLS handshake failed"),
        "{log}"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = TempDir::new("tls", "mutual");
    let pki = pki(&dir.0.join("pki"));
    let arg = |p: &PathBuf| p.to_str().unwrap().to_string();
    let served = serve_logging(
        dir.0.join("data"),
        &[
            "--tls-cert",
            &arg(&pki.server_cert),
            "--tls-key",
            &arg(&pki.server_key),
            "--tls-client-ca",
            &arg(&pki.ca),
            "--no-metrics",
        ],
        None,
    );
    // Without a client certificate: refused, on both listeners.
    let anonymous = omnia::tls::client_config(&pki.ca, None).unwrap();
    let refused = async {
        let client = Client::connect_with(&served.addr, tls_options(anonymous.clone())).await?;
        client.ping().await
    }
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );
    assert!(https_health(&served.http, anonymous).await.is_err());
    // With one the CA signed: served.
    let identified =
        omnia::tls::client_config(&pki.ca, Some((&pki.client_cert, &pki.client_key))).unwrap();
    let client = Client::connect_with(&served.addr, tls_options(identified.clone()))
        .await
        .unwrap();
    client.ping().await.unwrap();
    assert_eq!(
        https_health(&served.http, identified).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
    ctl(&served.addr, &pki, true, &["ping"]);
}

#[test]
fn bad_tls_files_stop_the_start_with_their_name() {
    let dir = TempDir::new("tls", "bad");
    std::fs::create_dir_all(&dir.0).unwrap();
    let junk = dir.0.join("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    let output = std::process::Command::new(OMNIA)
        .args(["serve", "--no-http", "--no-metrics", "--tls-cert"])
        .arg(&junk)
        .arg("--tls-key")
        .arg(&junk)
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "the TLS certificate {} holds no PEM certificate",
            junk.display()
        )),
        "{stderr}"
    );
}
