# Flood stdout with a gigabyte of text.
import sys

line = ("x" * 1023 + "\n").encode()
block = line * 1024  # 1 MB
for _ in range(CONFIG["mb"]):
    sys.stdout.buffer.write(block)
sys.stdout.flush()
