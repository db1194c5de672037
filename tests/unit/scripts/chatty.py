"""Prints a progress line before its JSON: the seeds' classic mistake."""
import json

print("Loading model...")
print(json.dumps({"ok": True}))
