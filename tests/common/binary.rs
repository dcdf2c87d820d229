//! The `omnia` binary, started on a free port with a data directory of its own, and
//! `omnia ctl` run against it: for tests of what an operator sees.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const OMNIA: &str = env!("CARGO_BIN_EXE_omnia");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed when dropped, so a test that fails half-way leaves no
/// server behind.
pub struct Process(pub Child);

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Already gone after a test's own kill or wait: that error is expected.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Served {
    pub child: Process,
    pub addr: String,
    pub metrics: String,
    /// `HOST:PORT` of the HTTP edge.
    pub http: String,
    pub _dir: tempdir::Dir,
}

pub mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn serve() -> Served {
    let port = free_port();
    serve_on(std::env::temp_dir().join(format!("omnia-cli-test-{port}")))
}

/// Starts `omnia serve` on a data directory (removed when the result is dropped).
pub fn serve_on(dir: std::path::PathBuf) -> Served {
    serve_with(dir, &[])
}

/// [`serve_on`] with more options.
pub fn serve_with(dir: std::path::PathBuf, options: &[&str]) -> Served {
    serve_logging(dir, options, None)
}

/// [`serve_with`], the server's log (its standard output, at `info`) written to `log`.
pub fn serve_logging(
    dir: std::path::PathBuf,
    options: &[&str],
    log: Option<&std::path::Path>,
) -> Served {
    let (port, metrics_port, http_port) = (free_port(), free_port(), free_port());
    let child = Command::new(OMNIA)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
            "--data-dir",
        ])
        .arg(&dir)
        .args(["--log", if log.is_some() { "info" } else { "warn" }])
        .args(options)
        .stdout(match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create the log file")),
            None => Stdio::null(),
        })
        .stderr(Stdio::null())
        .spawn()
        .expect("start omnia serve");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the server did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Served {
        child: Process(child),
        addr,
        metrics: format!("127.0.0.1:{metrics_port}"),
        http: format!("127.0.0.1:{http_port}"),
        _dir: tempdir::Dir(dir),
    }
}

pub fn ctl(addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(OMNIA)
        .args(["ctl", "--addr", addr])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Sends SIGTERM and waits for the exit, failing the test if it takes longer than
/// `limit`.
pub fn sigterm(served: &mut Served, limit: Duration) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + limit;
    loop {
        if let Some(exit) = served.child.try_wait().unwrap() {
            return exit;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The data directory holds exactly one snapshot (the one written at shutdown).
pub fn assert_one_snapshot(dir: &std::path::Path) {
    let snapshots: Vec<_> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        snapshots.len() == 1 && snapshots[0].ends_with(".snap"),
        "one snapshot, written at shutdown: {snapshots:?}"
    );
}

/// Waits until the HTTP edge at `http` (`HOST:PORT`) answers `/readyz` with 200: it is
/// bound before recovery, so it may answer a moment after the binary port.
pub async fn wait_ready(http: &str) {
    let ready = format!("http://{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(&ready).await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(Instant::now() < deadline, "/readyz never answered 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
