"""Isolation probe: tries to reach what a sandboxed program must never reach, reports as JSON.

Placeholders (NAME between double at-signs) are filled in by the test before it runs.
"""
import json
import os
import socket
import subprocess

report = {}

# 1. The val/test text: search every visible text file for the canaries.
canaries = [@@VAL_CANARY@@, @@TEST_CANARY@@]
args = ["grep", "-rlFI", "--no-messages"]
for d in ("proc", "sys", "dev", "program"):  # /sandbox/program holds this file itself
    args.append(f"--exclude-dir={d}")
for c in canaries:
    args += ["-e", c]
hits = subprocess.run(args + ["@@SEARCH_ROOT@@"], capture_output=True, text=True).stdout.split()
report["canary_files"] = hits

# 2. The home folder and a file planted there.
report["planted_home_file_visible"] = os.path.exists("@@HOME_FILE@@")

# 3. Secrets in our environment or any other process' environment.
seen = json.dumps(dict(os.environ))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            seen += open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError:
            pass
report["secret_visible"] = "@@SECRET@@" in seen

# 4. The network: the host's listener on loopback and on its external address, and DNS.
def connect(host, port):
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.sendall(b"leak")
        s.close()
        return "connected"
    except OSError as e:
        return type(e).__name__
report["loopback"] = connect("127.0.0.1", @@PORT@@)
report["external"] = connect("@@HOST_IP@@", @@PORT@@)
try:
    socket.getaddrinfo("example.com", 443)
    report["dns"] = "resolved"
except OSError as e:
    report["dns"] = type(e).__name__

# 5. Writes outside the output folder (unsandboxed, the test removes what this wrote).
wrote = []
for path in ["/sandbox/program/evil-@@TAG@@", "/usr/evil-@@TAG@@", "/etc/evil-@@TAG@@",
             "/evil-@@TAG@@", "@@HOST_DIR@@/evil-@@TAG@@"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        wrote.append(path)
    except OSError:
        pass
report["wrote_outside"] = wrote

with open("result.json", "w") as f:
    json.dump(report, f)
print(json.dumps(report))
