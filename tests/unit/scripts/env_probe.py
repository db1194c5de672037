"""Returns the environment variables named in input["names"] and its working directory."""
import json
import os
import sys

data = json.load(sys.stdin)
json.dump({"env": {n: os.environ.get(n) for n in data["names"]}, "cwd": os.getcwd()}, sys.stdout)
