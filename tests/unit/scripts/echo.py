"""Returns its input unchanged (plain script, no ScriptActor)."""
import json
import sys

json.dump(json.load(sys.stdin), sys.stdout)
