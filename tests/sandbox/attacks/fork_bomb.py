# Fork far more processes than the cap allows (bounded, so the unsandboxed control stays safe).
import os
import time

children = []
try:
    for _ in range(CONFIG["count"]):
        pid = os.fork()
        if pid == 0:
            time.sleep(CONFIG["hold_s"])
            os._exit(0)
        children.append(pid)
except OSError as e:
    report(f"fork failed after {len(children)}: {e}")
    raise SystemExit(3) from None
report(f"forked {len(children)}")
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
