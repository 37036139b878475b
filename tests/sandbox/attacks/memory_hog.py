# Allocate (and touch) far more memory than the cap.
blocks = []
for _ in range(CONFIG["mb"] // 32):
    blocks.append(b"\x01" * (32 << 20))
report(f"allocated {len(blocks) * 32} MB")
