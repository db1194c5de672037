"""Starts a sleeping child, writes its pid to input["pid_file"] (if given), then sleeps forever.

With input["ignore_term"] it ignores SIGTERM, and so does its child (an ignored
signal stays ignored across fork and exec), so only SIGKILL ends them.
"""
import json
import os
import signal
import subprocess
import sys
import time

data = json.load(sys.stdin)
if data.get("ignore_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
if data.get("pid_file"):  # only where a test reads it: never replace a path it did not make
    tmp = data["pid_file"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(child.pid))
    os.replace(tmp, data["pid_file"])  # atomic: the test never reads half a pid
print("waiting forever", file=sys.stderr, flush=True)
while True:
    time.sleep(60)
