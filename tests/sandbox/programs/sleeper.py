"""Tries to outlive its deadline: ignores SIGTERM, sleeps, and leaves a setsid grandchild writing a
heartbeat (a daemon meant to survive the run).

CONFIG (the test may replace that line): ``token`` names this process and every one it forks
(/proc/PID/comm), so the host can find a survivor by name; ``life_s`` ends the program and its
daemon after that many seconds (the default: never), printing "lived to the end"."""
import json
import os
import signal
import time

CONFIG = json.loads("{}")

if CONFIG.get("token"):
    with open("/proc/self/comm", "w") as f:
        f.write(CONFIG["token"])
end = time.monotonic() + CONFIG.get("life_s", float("inf"))
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open("ns.txt", "w") as f:  # lets the test find exactly this sandbox's processes
    f.write(os.readlink("/proc/self/ns/pid"))
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while time.monotonic() < end:
            with open("heartbeat", "a") as f:
                f.write(".")
            time.sleep(0.1)
        os._exit(0)
    os._exit(0)
print("sleeping", flush=True)
while time.monotonic() < end:
    time.sleep(0.2)
print("lived to the end", flush=True)
