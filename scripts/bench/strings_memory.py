# Usage: python3 scripts/bench/strings_memory.py OMNIA_BINARY plain|churn PORT
# Resident memory of `omnia serve` after 1M customers get a country each: unique values
# then overwritten with "NL" (churn), or "NL" only (plain); and after a restart.
import json, subprocess, sys, time, os, shutil, socket
OMNIA = sys.argv[1]; mode = sys.argv[2]; port = int(sys.argv[3]); data = f"/tmp/mem/strings-{mode}"
N = 1_000_000
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
def serve():
    p = subprocess.Popen([OMNIA, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}", "--no-metrics", "--no-http", "--log", "error"])
    for _ in range(600):
        try: socket.create_connection(("127.0.0.1", port)).close(); return p
        except OSError: time.sleep(0.1)
    raise SystemExit("no server")
def ingest(value_of, ts):
    path = "/tmp/mem/events.ndjson"
    with open(path, "w") as f:
        for i in range(N):
            f.write(json.dumps({"type": "identify", "userId": str(i), "traits": {"country": value_of(i)}, "context": {"channel": "web"}, "timestamp": ts}) + "\n")
    subprocess.run([OMNIA, "ctl", "--addr", f"127.0.0.1:{port}", "ingest", path, "--batch", "5000"], check=True, stdout=subprocess.DEVNULL)
shutil.rmtree(data, ignore_errors=True)
p = serve()
now = int(time.time() * 1000)
if mode == "churn":
    ingest(lambda i: f"unique-{i:08}", now - 2000)
    print("unique values held", rss(p.pid), "MiB", flush=True)
ingest(lambda i: "NL", now - 1000)
time.sleep(3)
print(mode, "live", rss(p.pid), "MiB", flush=True)
p.terminate(); p.wait()
p = serve(); time.sleep(3)
print(mode, "after restart", rss(p.pid), "MiB", flush=True)
p.terminate(); p.wait()
shutil.rmtree(data, ignore_errors=True)
