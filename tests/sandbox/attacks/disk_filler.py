# Fill the output folder with many files, each under the per-file cap.
import os

out = os.environ.get("DARWIN_OUT_DIR", ".")
chunk = b"\x02" * (1 << 20)
for i in range(CONFIG["mb"] // 16):
    with open(os.path.join(out, f"fill-{i}.bin"), "wb") as f:
        for _ in range(16):
            f.write(chunk)
report(f"wrote {CONFIG['mb']} MB")
