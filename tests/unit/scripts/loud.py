"""Floods stderr (and stdout with input["stdout_mib"] MiB), then exits input["exit"]."""
import json
import sys

data = json.load(sys.stdin)
for i in range(100_000):
    sys.stderr.write(f"noise line {i:06d} " + "x" * 40 + "\n")
sys.stderr.write("the last word\n")
mib = data.get("stdout_mib", 0)
if mib:
    sys.stdout.write('{"pad": "' + "y" * (mib * 2**20) + '"}')
else:
    sys.stdout.write('{"done": true}')
sys.exit(data.get("exit", 0))
