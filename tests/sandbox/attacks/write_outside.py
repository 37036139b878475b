# Write outside the output folder: the evaluator, the program, site-packages, the OS, host folders.
wrote = []
for target in CONFIG["targets"]:
    try:
        with open(target, "w") as f:
            f.write("pwned " + CONFIG["token"])
        wrote.append(target)
    except OSError as e:
        print(f"{target}: blocked ({e.strerror})")
report(f"wrote: {wrote}")
raise SystemExit(0 if wrote else 3)
