//! Memory the real server holds for greedy clients: proportional to the bytes they
//! sent, within the bound `docs/operations.md` states, and given back once they leave.
//! Resident memory is read from `/proc`, so these tests need Linux.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::binary::{free_port, serve_with, Served};
use omnia::protocol::opcode;

/// Resident memory of a process, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Connections the server counts now.
fn connections(served: &Served) -> u32 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = omnia::client::Client::connect(&served.addr).await.unwrap();
        client.stats().await.unwrap().connections - 1
    })
}

/// Polls `what` until it holds, for at most `limit`.
fn eventually(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    what()
}

const MIB: u64 = 1 << 20;

#[test]
fn a_thousand_connections_declaring_8_mib_frames_cost_their_bytes_not_their_promises() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("omnia-memory-test-{port}"));
    let mut served = serve_with(dir, &["--max-connections", "1100"]);
    let pid = served.child.id();
    let before = resident(pid);

    // HELLO, then a header that declares an 8 MiB INGEST and sends none of it: 31 bytes.
    let mut greeting = common::raw::hello_frame("promises");
    greeting.extend_from_slice(&(8u32 << 20).to_le_bytes());
    greeting.extend_from_slice(&[1, opcode::INGEST, 0, 0, 2, 0, 0, 0]);
    let mut open = Vec::new();
    for _ in 0..1000 {
        let mut socket = TcpStream::connect(&served.addr).unwrap();
        socket.write_all(&greeting).unwrap();
        open.push(socket);
    }
    assert!(
        eventually(Duration::from_secs(30), || connections(&served) >= 1000),
        "the server took every connection"
    );
    let with = resident(pid);
    // docs/operations.md: each connection costs at most 16 KiB of read buffer, 16 KiB of
    // write buffer and 16 KiB of task and socket state, plus twice what it has sent.
    // Reserving the declared frames instead takes gigabytes.
    let bound = 1000 * 48 * 1024 + 2 * 1000 * 31;
    assert!(
        with.saturating_sub(before) < bound,
        "{} MiB resident with 1,000 connections, {} MiB before: more than the bound of {} MiB",
        with / MIB,
        before / MIB,
        bound / MIB
    );

    drop(open);
    assert!(
        eventually(Duration::from_secs(30), || connections(&served) == 0),
        "the connections closed"
    );
    let given_back = eventually(Duration::from_secs(30), || {
        resident(pid) < before + (with - before) / 2
    });
    assert!(
        given_back,
        "memory was not given back after the connections closed: {} MiB before, {} MiB with them, {} MiB after",
        before / MIB,
        with / MIB,
        resident(pid) / MIB
    );
    served.child.kill().unwrap();
    served.child.wait().unwrap();
}
