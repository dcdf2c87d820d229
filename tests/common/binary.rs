//! The `omnia` binary, started on a free port with a data directory of its own, and
//! `omnia ctl` run against it: for tests of what an operator sees.

use std::io::Write;
use std::net::TcpListener;
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
    /// `HOST:PORT` of the metrics endpoint; empty with `--no-metrics`.
    pub metrics: String,
    /// `HOST:PORT` of the HTTP edge; empty with `--no-http`.
    pub http: String,
    pub _dir: tempdir::Dir,
    _log: Option<tempdir::File>,
}

pub mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A file removed when dropped.
    pub struct File(pub std::path::PathBuf);
    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
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

/// [`serve_with`], the server's log (its standard output, at `info`) kept in `log`
/// (otherwise in a file beside the data directory, removed with it).
pub fn serve_logging(
    dir: std::path::PathBuf,
    options: &[&str],
    log: Option<&std::path::Path>,
) -> Served {
    let (log, guard) = match log {
        Some(path) => (path.to_path_buf(), None),
        None => {
            let path = dir.with_extension("log");
            (path.clone(), Some(tempdir::File(path)))
        }
    };
    let mut command = Command::new(OMNIA);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .args(options);
    let (child, listening) = spawn_listening(command, &log);
    Served {
        child,
        addr: listening.binary,
        metrics: listening.metrics.unwrap_or_default(),
        http: listening.http.unwrap_or_default(),
        _dir: tempdir::Dir(dir),
        _log: guard,
    }
}

/// `omnia serve` on the data directory `data`, the binary protocol only, with `options`
/// after; its log beside the directory (`data.log`). Returns it and its address.
pub fn serve_binary(data: &std::path::Path, options: &[&std::ffi::OsStr]) -> (Process, String) {
    let mut command = Command::new(OMNIA);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--no-http",
            "--data-dir",
        ])
        .arg(data)
        .args(options);
    let (child, listening) = spawn_listening(command, &data.with_extension("log"));
    (child, listening.binary)
}

/// Where a server started by [`spawn_listening`] listens.
pub struct Listening {
    pub binary: String,
    pub metrics: Option<String>,
    pub http: Option<String>,
}

/// Starts `command` (an `omnia serve`) with its log at `info` written to `log`, and
/// waits until it serves, reading the addresses it bound from that log. Ports given as
/// `:0` are chosen by the kernel, so two tests never race for one port: a port picked
/// free and then bound by the server could be taken in between.
pub fn spawn_listening(mut command: Command, log: &std::path::Path) -> (Process, Listening) {
    let file = std::fs::File::create(log).expect("create the server's log file");
    let mut child = Process(
        command
            .args(["--log", "info"])
            .stdout(Stdio::from(file))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start omnia serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let address = |message: &str| {
            let line = text.lines().find(|line| line.contains(message))?;
            let (_, rest) = line.split_once(" addr=")?;
            Some(rest.split_whitespace().next()?.to_string())
        };
        if let Some(binary) = address("omnia is serving") {
            let listening = Listening {
                binary,
                metrics: address("metrics at /metrics"),
                http: address("HTTP API"),
            };
            return (child, listening);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(
                child.stderr.as_mut().expect("stderr is piped"),
                &mut stderr,
            );
            panic!("the server exited before serving ({status}): {stderr}\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start serving within 20 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
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
    while super::http_client()
        .get(&ready)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "/readyz never answered 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
