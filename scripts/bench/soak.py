#!/usr/bin/env python3
"""A soak run: mixed load from loadgen against a release `omnia serve`, with hostile
clients on the side, and the server's resident memory sampled over time.

Usage: python3 scripts/bench/soak.py OMNIA LOADGEN SECONDS OUT_DIR

Hostile clients, each in a loop for the whole run, on loopback only:
- garbage: connects and sends random bytes (broken framing);
- slow readers: say HELLO, pipeline STATS requests and never read the answers, then
  leave after 20 s;
- silent sockets: connect and say nothing (closed by the handshake timeout);
- deep JSON: INGEST_JSON nested 100,000 levels;
- promises: declare an 8 MiB frame, send 1 MiB of it slowly, then leave.

Writes OUT_DIR/soak.csv (seconds, resident MiB, customers, hostile connections made),
OUT_DIR/soak.svg (resident memory and customers over time), OUT_DIR/loadgen.html and
OUT_DIR/loadgen.json.
"""
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

OMNIA, LOADGEN, SECONDS, OUT = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
PORT = 7990
ADDR = ("127.0.0.1", PORT)
DATA = "/tmp/omnia-soak-data"
stop = threading.Event()
made = {"garbage": 0, "slow": 0, "silent": 0, "deep": 0, "promises": 0}


def frame(opcode, request_id, body):
    return struct.pack("<IBBHI", 8 + len(body), 1, opcode, 0, request_id) + body


def hello():
    name = b"soak"
    return frame(0x01, 1, struct.pack("<HHH", 1, 1, len(name)) + name)


def connect():
    s = socket.create_connection(ADDR, timeout=30)
    return s


def loop(name, body):
    while not stop.is_set():
        try:
            body()
            made[name] += 1
        except OSError:
            time.sleep(0.1)


def garbage():
    with connect() as s:
        s.sendall(os.urandom(random.randint(1, 4096)))
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
    time.sleep(0.05)


def slow_reader():
    with connect() as s:
        s.setblocking(False)
        stats = frame(0x30, 2, b"\x01")
        s.send(hello())
        end = time.time() + 20
        while time.time() < end and not stop.is_set():
            try:
                s.send(stats * 64)
            except BlockingIOError:
                time.sleep(0.2)


def silent():
    socks = [connect() for _ in range(20)]
    time.sleep(7)
    for s in socks:
        s.close()


def deep_json():
    with connect() as s:
        doc = b"[" * 100_000 + b"]" * 100_000
        s.sendall(hello() + frame(0x11, 2, doc))
        s.recv(65536)
        time.sleep(0.5)


def promises():
    with connect() as s:
        s.sendall(hello() + struct.pack("<IBBHI", 8 << 20, 1, 0x10, 0, 2))
        for _ in range(16):
            if stop.is_set():
                break
            s.sendall(b"\0" * 65536)
            time.sleep(0.1)


def resident(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024


def customers():
    out = subprocess.run(
        [OMNIA, "ctl", "--addr", f"127.0.0.1:{PORT}", "--json", "stats"],
        capture_output=True,
        timeout=30,
    )
    try:
        return json.loads(out.stdout)["customers"]
    except (ValueError, KeyError):
        return None


def svg(rows, path):
    width, height, pad = 900, 360, 50
    t_max = max(r[0] for r in rows) or 1
    m_max = max(r[1] for r in rows) * 1.15
    c_max = max((r[2] or 0) for r in rows) * 1.15 or 1

    def x(t):
        return pad + (width - 2 * pad) * t / t_max

    def y(v, top):
        return height - pad - (height - 2 * pad) * v / top

    memory = " ".join(f"{x(t):.1f},{y(m, m_max):.1f}" for t, m, _, _ in rows)
    people = " ".join(
        f"{x(t):.1f},{y(c, c_max):.1f}" for t, _, c, _ in rows if c is not None
    )
    ticks = "".join(
        f'<text x="{pad - 6}" y="{y(m_max * k / 4, m_max) + 4:.1f}" text-anchor="end">{m_max * k / 4:.0f}</text>'
        for k in range(5)
    )
    return open(path, "w").write(
        f"""<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-size="14">omnia soak: resident memory (MiB, blue) and customers (grey, scaled to {c_max / 1.15:.0f}) over {t_max:.0f} s</text>
<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>
{ticks}
<text x="{width - pad}" y="{height - pad + 20}" text-anchor="end">{t_max:.0f} s</text>
<polyline points="{people}" fill="none" stroke="#999" stroke-width="1.5"/>
<polyline points="{memory}" fill="none" stroke="#1f5fbf" stroke-width="2"/>
</svg>
"""
    )


def main():
    os.makedirs(OUT, exist_ok=True)
    shutil.rmtree(DATA, ignore_errors=True)
    server = subprocess.Popen(
        [OMNIA, "serve", "--data-dir", DATA, "--listen", f"127.0.0.1:{PORT}", "--no-metrics", "--no-http", "--log", "error"]
    )
    for _ in range(300):
        try:
            socket.create_connection(ADDR).close()
            break
        except OSError:
            time.sleep(0.1)
    load = subprocess.Popen(
        [LOADGEN, "--addr", f"127.0.0.1:{PORT}", "--workload", "mixed", "--rate", "100000",
         "--decide-rate", "10000", "--feedback-rate", "1000", "--batch", "100", "--pipeline", "16",
         "--seconds", str(SECONDS), "--warmup", "2", "--no-progress",
         "--report", f"{OUT}/loadgen.html", "--json", f"{OUT}/loadgen.json"],
        stdout=subprocess.DEVNULL,
    )
    hostile = [("garbage", garbage), ("slow", slow_reader), ("slow", slow_reader),
               ("silent", silent), ("deep", deep_json), ("promises", promises), ("promises", promises)]
    threads = [threading.Thread(target=loop, args=h, daemon=True) for h in hostile]
    for t in threads:
        t.start()
    rows = []
    started = time.time()
    while load.poll() is None:
        t = time.time() - started
        count = customers() if len(rows) % 6 == 0 else None
        rows.append((t, resident(server.pid), count, sum(made.values())))
        print(f"{t:6.0f} s  {rows[-1][1]:7.1f} MiB  customers {count}  hostile {rows[-1][3]}", flush=True)
        time.sleep(5)
    stop.set()
    alive = server.poll() is None
    server.terminate()
    server.wait()
    with open(f"{OUT}/soak.csv", "w") as f:
        f.write("seconds,resident_mib,customers,hostile_connections\n")
        for t, m, c, h in rows:
            f.write(f"{t:.0f},{m:.1f},{'' if c is None else c},{h}\n")
    svg(rows, f"{OUT}/soak.svg")
    print("server alive at the end:", alive, "hostile connections by kind:", made)
    shutil.rmtree(DATA, ignore_errors=True)


main()
