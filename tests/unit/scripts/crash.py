"""Writes to stderr and exits 3; prints whatever `say` it is given on stderr too."""
import json
import sys

data = json.load(sys.stdin)
print("connecting to the archive", file=sys.stderr)
if "say" in data:
    print(data["say"], file=sys.stderr)
print("archive unreachable: giving up", file=sys.stderr)
sys.exit(3)
