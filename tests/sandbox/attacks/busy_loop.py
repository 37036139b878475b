# Spin past the deadline, ignoring polite signals.
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
end = time.monotonic() + CONFIG["spin_s"]
while time.monotonic() < end:
    pass
report("spun to the end")
