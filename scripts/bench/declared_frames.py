# Resident memory of a running `omnia serve` (PID) while N connections each send HELLO
# and a 12-byte header declaring an 8 MiB INGEST frame, then after they close.
# Usage: python3 scripts/bench/declared_frames.py PORT PID N
import socket, struct, sys, time, os
addr = ("127.0.0.1", int(sys.argv[1])); pid = int(sys.argv[2]); n = int(sys.argv[3])
def rss(): 
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])//1024
def hello(rid):
    body = struct.pack("<HH", 1, 1) + struct.pack("<H", 5) + b"probe"
    return struct.pack("<IBBHI", 8+len(body), 1, 1, 0, rid) + body
print("before", rss())
socks=[]
for i in range(n):
    s=socket.create_connection(addr)
    s.sendall(hello(1) + struct.pack("<IBBHI", 8*1024*1024, 1, 0x10, 0, 2))
    socks.append(s)
time.sleep(2)
print("with", n, rss())
for s in socks: s.close()
time.sleep(2)
print("after close", rss())
