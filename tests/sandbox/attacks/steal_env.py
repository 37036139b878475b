# Look for secrets in our environment, in pid 1's, in our parent's, and in every readable process's
# (each entry reported with where it was found).
import glob
import os

found = [f"own environment: {k}={v}" for k, v in os.environ.items()]
for path in ["/proc/1/environ", f"/proc/{os.getppid()}/environ", *glob.glob("/proc/[0-9]*/environ")]:
    try:
        with open(path, "rb") as f:
            found += [f"{path}: {x}" for x in f.read().decode(errors="replace").split("\0") if x]
    except OSError:
        pass
report("\n".join(found))
raise SystemExit(0 if any(CONFIG["canary"] in x for x in found) else 3)
