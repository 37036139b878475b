"""Shared by every attack program (the test pastes it in front of each): CONFIG comes from the
test, ``mark()`` names this process so the host can find any survivor, ``report()`` writes what
was taken where a careless harness would pick it up (the output folder and the log)."""
import json
import os
import sys

CONFIG = json.loads(os.environ.get("ATTACK_CONFIG") or "{}")  # replaced by the test


def mark():
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(CONFIG["token"])
    except OSError:
        pass


def report(text):
    print(text, flush=True)
    try:
        with open(os.path.join(os.environ.get("DARWIN_OUT_DIR", "."), "stolen.txt"), "a") as f:
            f.write(text + "\n")
    except OSError as e:
        print("cannot write the report:", e, file=sys.stderr)


mark()
