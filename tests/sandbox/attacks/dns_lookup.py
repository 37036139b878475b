# Resolve a public name through the system resolver, and send a DNS query to the host directly.
import socket
import struct

ok = False
try:
    report(f"resolved {CONFIG['name']}: {socket.getaddrinfo(CONFIG['name'], 443)[0][4][0]}")
    ok = True
except OSError as e:
    report(f"resolver blocked: {e}")
query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(p)]) + p.encode() for p in CONFIG["name"].split(".")) + b"\0" + struct.pack(">HH", 1, 1)
try:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(query + CONFIG["token"].encode(), (CONFIG["host"], CONFIG["port"]))
    report("query sent")
    ok = True
except OSError as e:
    report(f"query blocked: {e}")
raise SystemExit(0 if ok else 3)
