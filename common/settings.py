"""Settings from WAVEFARM_* environment variables (or a .env file).

URLs are SecretStr: they carry passwords, so they print as '**********' and
only common.redact decides what part of them a person may see.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAVEFARM_", env_file=".env", extra="ignore")

    # Unset: the zero-setup defaults, an embedded Postgres (orchestrator/embedded_postgres.py)
    # and a local broker (common/local_broker.py) in `data_dir`, for one machine.
    database_url: SecretStr | None = None
    # What scripts get as WAVEFARM_DATABASE_URL: a role that may write your tables and
    # nothing of the farm's (deploy/scripts-role.sql). Unset: the orchestrator's own URL.
    scripts_database_url: SecretStr | None = None
    broker_url: SecretStr | None = None
    data_dir: Path | None = None  # default: the user's data directory (~/.local/share/wavefarm)
    scripts_dir: Path | None = None
    ollama_url: str = "http://127.0.0.1:11434"
    db_pool_size: int = 8
    log_json: bool = False
    # Redis re-delivers an unacknowledged task after this long; it must exceed the
    # longest step timeout, or a slow model call would be handed to a second worker
    # while the first still works on it (docs/operations.md).
    broker_visibility_timeout_s: int = 6 * 3600
    # The retry rule's backoff (common/retries.py): the n-th retry of an interaction
    # waits between half and all of min(max, base * 2**(n-1)) seconds.
    retry_backoff_s: float = Field(1.0, gt=0, le=3600)
    retry_backoff_max_s: float = Field(60.0, gt=0, le=24 * 3600)
    # A server busy (HTTP 429/503) this many times in a row for one interaction fails it.
    busy_retries: int = Field(10, ge=0, le=1000)
    # Escalation (orchestrator/escalation.py): a step whose attempts keep failing with the
    # same step fault (script error, invalid output, bad request, render error) in a batch
    # is held until `resume`: this many in a row, or more than half of the last
    # `escalation_window`. 0 turns that test off.
    escalation_streak: int = Field(10, ge=0, le=100_000)
    escalation_window: int = Field(20, ge=0, le=100_000)
    # What one rendered prompt (with its system prompt) or script input may hold; past it
    # the interaction fails as render_error instead of sending megabytes.
    max_rendered_chars: int = Field(1_000_000, ge=1_000, le=100_000_000)
    # Residency (orchestrator/placement.py): a model with work and no host waits at most
    # about this long for one (it takes a spot after half of it, the rest is the drain and
    # the load); a placed model with no work is let go (unloaded) after residency_idle_s.
    residency_wait_s: float = Field(60.0, ge=2, le=24 * 3600)
    residency_idle_s: float = Field(300.0, ge=0, le=7 * 24 * 3600)

    def database_url_for_scripts(self, fallback: str | None) -> tuple[str | None, bool]:
        """The URL scripts get, and whether it is the orchestrator's own (`fallback`:
        WAVEFARM_DATABASE_URL, or the embedded Postgres's), with all its privileges."""
        if self.scripts_database_url is not None:
            return self.scripts_database_url.get_secret_value(), False
        return fallback, fallback is not None

    def require_database_url(self) -> str:
        return _required(self.database_url, "WAVEFARM_DATABASE_URL",
                         "a Postgres database, e.g. postgresql://user@127.0.0.1:5432/wavefarm")

    def require_broker_url(self) -> str:
        """WAVEFARM_BROKER_URL, or the local broker in the data directory when it is unset."""
        if self.broker_url is not None:
            return self.broker_url.get_secret_value()
        from common.local_broker import local_broker_url  # kombu's transport: only when used

        directory = self.local_data_dir() / "broker"
        _notice(f"WAVEFARM_BROKER_URL is not set: using the local broker in {directory} "
                "(the farm's processes on this machine only)")
        return local_broker_url(directory)

    def local_data_dir(self) -> Path:
        """Where the zero-setup mode keeps its state: the embedded Postgres, the local broker."""
        if self.data_dir is not None:
            return self.data_dir.expanduser()
        import platformdirs

        return Path(platformdirs.user_data_dir("wavefarm"))


def check_broker_url(url: str) -> str:
    """`url` if kombu can use it; else a ConfigError that says what is wrong without
    quoting it (a parser's own message can quote a piece of the password)."""
    from urllib.parse import urlsplit

    from common.redact import redact

    if url.startswith("filesystem://"):
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a port that is not one)
    except ValueError:
        raise ConfigError(f"the broker URL {redact(url)} is not usable: its host or port cannot be read. "
                          "Is there a # ? / or @ in the password? Percent-encode it (# as %23, ? as %3F, "
                          "/ as %2F, @ as %40)") from None
    from kombu.transport import TRANSPORT_ALIASES

    if parts.scheme.split("+")[0] not in TRANSPORT_ALIASES:
        raise ConfigError(f"the broker URL {redact(url)} is not usable: use amqp://... (RabbitMQ) or "
                          "redis://... (Redis), or leave WAVEFARM_BROKER_URL unset for the local broker")
    return url


def _required(value: SecretStr | None, name: str, what: str) -> str:
    if value is None:
        raise ConfigError(f"{name} is not set: point it at {what}")
    return value.get_secret_value()


@lru_cache(maxsize=None)
def _notice(text: str) -> None:
    # Once per process: a default that decides where data goes is worth one line.
    log.warning("%s", text)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, or a ConfigError naming each bad one: never a traceback, and never
    the value itself (it may be a password)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"WAVEFARM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"a setting is not usable: {problems}") from None
