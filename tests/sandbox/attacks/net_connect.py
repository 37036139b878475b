# Connect to a listener on the host (its 127.0.0.1, or its external address) and send a token.
import socket

try:
    with socket.create_connection((CONFIG["host"], CONFIG["port"]), timeout=3) as s:
        s.sendall(CONFIG["token"].encode())
    report("connected")
except OSError as e:
    report(f"blocked: {e}")
    raise SystemExit(3) from None
