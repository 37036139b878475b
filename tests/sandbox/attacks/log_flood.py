# Flood stdout with far more text than the log may hold.
import sys

line = ("x" * 1023 + "\n").encode()
block = line * 1024  # 1 MB
for _ in range(CONFIG["mb"]):
    sys.stdout.buffer.write(block)
sys.stdout.flush()
