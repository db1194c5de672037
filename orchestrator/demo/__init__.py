"""`orchestrator demo`: the main job in one command on a machine with nothing but Python.

It sets up what the farm needs and nobody installed: an embedded Postgres in the user's
data directory (orchestrator/embedded_postgres.py), the filesystem broker next to it
(common/local_broker.py), and a model server (one given, a local Ollama, or the built-in
small model). Then it runs the farm as production does, as separate processes:
`orchestrator serve`, a `script-worker` and a `gpu-worker`, each logging to a file in
the data directory. It loads the example workflow, submits the sample postings, shows
progress until every run has ended, prints the results and where to look next, and
stops everything it started, on success, on error and on Ctrl-C alike.
docs/embedded.md tells the whole story.

One job per module: `example` (what to run: the example that travels with the package,
or the files given), `server` (finding a model server and fitting the workflow's models
to it), `farm` (serve and the workers, under common/supervisor.py), `progress` (the live
display), `results` (what ended, what the scripts saved, where to look next), `command`
(the command, which puts them together and cleans up).
"""

from orchestrator.demo.command import demo

__all__ = ["demo"]
