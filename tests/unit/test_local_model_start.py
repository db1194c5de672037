"""The local model's start-up says what went wrong when llama.cpp's server cannot serve
on this machine, instead of the first caller seeing a refused connection. A stand-in
server process (real HTTP, a real process) lists the model and then dies at its first
call, as a llama.cpp build for CPU features the machine cannot run does."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from common.supervisor import Supervisor
from gpu_worker import local_model
from tests.net import free_port

DIES_AT_FIRST_CALL = textwrap.dedent("""
    import json, os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": sys.argv[2]}]}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def do_POST(self):
            os.kill(os.getpid(), signal.SIGSEGV)

    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_a_server_that_dies_at_its_first_call_is_reported_at_start_with_the_fix(tmp_path: Path):
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(DIES_AT_FIRST_CALL)
    with Supervisor(tmp_path) as supervisor:
        server = supervisor.start("server", [sys.executable, str(script), str(port), local_model.MODEL_NAME])
        with pytest.raises(local_model.LocalModelError) as err:
            local_model._wait_ready(server, f"http://127.0.0.1:{port}", timeout=30)
    message = str(err.value)
    assert "died of signal 11 at its first call" in message
    assert "GGML_NATIVE=OFF" in message and "general protection fault" in message
