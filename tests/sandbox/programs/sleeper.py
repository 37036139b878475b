"""Tries to outlive its deadline: ignores SIGTERM, sleeps forever, and leaves a setsid grandchild
writing a heartbeat (a daemon meant to survive the run)."""
import os
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open("ns.txt", "w") as f:  # lets the test find exactly this sandbox's processes
    f.write(os.readlink("/proc/self/ns/pid"))
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open("heartbeat", "a") as f:
                f.write(".")
            time.sleep(0.1)
    os._exit(0)
print("sleeping forever", flush=True)
while True:
    time.sleep(1)
