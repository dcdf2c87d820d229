"""Prints the server's own breakdown of request time (omnia_request_stage_seconds) as a
markdown table: per operation and stage, the count, the mean, and the bucket bounds under
which 50%, 99% and 99.9% of requests fell (the histogram's buckets: 10 us, 25 us, 50 us,
100 us, 250 us, 500 us, 1 ms, 2.5 ms, 5 ms, 10 ms, 25 ms, ...).

    python3 scripts/bench/stages.py http://127.0.0.1:9878/metrics decide,ingest,feedback

Scrape it right after a loadgen run against a freshly started server, so the histograms
hold that run only (they count from the server's start, warm-up included).
"""
import sys, re, urllib.request, collections
text = urllib.request.urlopen(sys.argv[1]).read().decode()
ops = sys.argv[2].split(",")
h = collections.defaultdict(list); counts = {}
for line in text.splitlines():
    m = re.match(r'omnia_request_stage_seconds_bucket\{op="(\w+)",stage="(\w+)",le="([^"]+)"\} (\d+)', line)
    if m: h[(m[1], m[2])].append((float('inf') if m[3] == '+Inf' else float(m[3]), int(m[4])))
    m = re.match(r'omnia_request_stage_seconds_(sum|count)\{op="(\w+)",stage="(\w+)"\} ([\d.e+-]+)', line)
    if m: counts[(m[2], m[3], m[1])] = float(m[4])
def q(b, p):
    b = sorted(b); total = b[-1][1]
    for le, c in b:
        if c >= p * total: return le
fmt = lambda s: "inf" if s == float('inf') else ("%.0f µs" % (s * 1e6) if s < 1e-3 else "%.1f ms" % (s * 1e3))
print("| op | stage | count | mean | p50 ≤ | p99 ≤ | p99.9 ≤ |")
print("|---|---|---|---|---|---|---|")
for op in ops:
    for st in ["queued", "apply", "journal", "reply"]:
        b = h.get((op, st))
        if not b: continue
        n = counts.get((op, st, "count"), 0); s = counts.get((op, st, "sum"), 0)
        print(f"| {op} | {st} | {int(n)} | {fmt(s/n) if n else '-'} | {fmt(q(b,.5))} | {fmt(q(b,.99))} | {fmt(q(b,.999))} |")
