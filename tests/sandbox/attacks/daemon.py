# Double fork + setsid: a daemon meant to outlive the run (the host finds it by its name, which it
# inherits), writing heartbeats into the output folder.
import os
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        beat = os.path.join(os.environ.get("DARWIN_OUT_DIR", "."), "heartbeat")
        end = time.monotonic() + CONFIG["live_s"]
        while time.monotonic() < end:
            with open(beat, "w") as f:
                f.write(f"{os.getpid()} {time.time()}")
            time.sleep(0.1)
        os._exit(0)
    os._exit(0)
time.sleep(0.3)  # let the daemon start, then leave
report("daemon started")
