"""The Ollama backend: one /api/chat call per task over a pooled requests.Session.

Non-streaming on purpose: a worker needs the whole answer before it can report, and
the final object is the one that carries the token counts and durations. The call
cycle (timeouts, failures, format validation, scrubbing) is base.HttpBackend's.
"""

from __future__ import annotations

from typing import Any

from common.messages import AiTask, Failure, FailureClass, Resident
from gpu_worker.backends.base import Answer, HttpBackend

METRIC_KEYS = ("prompt_eval_count", "eval_count", "total_duration", "load_duration",
               "prompt_eval_duration", "eval_duration")

class OllamaBackend(HttpBackend):
    chat_path = "/api/chat"
    models_path = "/api/tags"

    def __init__(self, base_url: str, *, pool_size: int = 8, worker: str = "") -> None:
        super().__init__(base_url, pool_size=pool_size, worker=worker)

    def _payload(self, task: AiTask) -> dict[str, Any]:
        messages = [{"role": "user", "content": task.prompt}]
        if task.system is not None:
            messages.insert(0, {"role": "system", "content": task.system})
        payload: dict[str, Any] = {"model": task.model, "messages": messages, "stream": False,
                                   "options": task.options}
        # Omitted rather than null: Ollama treats a present keep_alive/format as a request.
        if task.format is not None:
            payload["format"] = task.format
        if task.keep_alive is not None:
            payload["keep_alive"] = task.keep_alive
        return payload

    def _read(self, body: dict[str, Any], task: AiTask, metrics: dict[str, Any], elapsed_s: float) -> Answer | Failure:
        metrics.update({k: body[k] for k in METRIC_KEYS if k in body})
        done_reason = body.get("done_reason")
        if isinstance(done_reason, str):  # same key as the OpenAI backend's finish_reason
            metrics["finish_reason"] = done_reason
        message = body.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            return Failure(failure_class=FailureClass.SERVER_ERROR,
                           message=f"{self._where(task)} answered without message.content")
        return Answer(content, truncated=done_reason == "length")

    def _model_identities(self, body: Any) -> dict[str, str]:
        # The digest names the build: a model pulled again under the same name is another.
        found = {}
        for m in body["models"]:
            name = m.get("name") or m["model"]
            found[name] = m.get("digest") or name
        return found

    def running(self) -> list[Resident]:
        """The models loaded now (/api/ps), with their size, expiry and context length;
        raises BackendError when the server cannot be asked."""
        try:
            listed = self._ask("GET", "/api/ps").json()["models"]
            return [Resident(model=m.get("name") or m["model"], size=m.get("size_vram") or m.get("size"),
                             expires_at=m.get("expires_at"), context_length=m.get("context_length"))
                    for m in listed if "\0" not in (m.get("name") or m["model"])]
        except (ValueError, KeyError, TypeError, AttributeError):  # a pydantic ValidationError is a ValueError
            raise self.unexpected("/api/ps") from None

    def unload(self, model: str) -> None:
        """Ollama's unload: a request with no prompt and keep_alive 0 (once the model's calls end)."""
        self._ask("POST", "/api/generate", model=model, json={"model": model, "keep_alive": 0})
