# Kill our parent, and a process whose pid we learnt (standing in for the orchestrator).
import os
import time

hit = []
for pid in (os.getppid(), CONFIG["victim_pid"]):
    try:
        os.kill(pid, 9)
        hit.append(pid)
    except OSError as e:
        print(f"kill {pid}: {e}")
time.sleep(0.5)
report(f"killed {hit}")
