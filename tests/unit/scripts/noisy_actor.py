"""A ScriptActor whose process() prints, and starts a child that prints, to stdout."""
import subprocess
import sys

from script_worker.actor import ScriptActor


class Noisy(ScriptActor):
    def process(self, data: dict) -> dict:
        print("debug: starting")
        subprocess.run([sys.executable, "-c", "print('child says hi')"], check=True)
        print("debug: done")
        return {"value": data.get("value", 0) * 2}


if __name__ == "__main__":
    Noisy.main()
