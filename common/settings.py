"""Settings from WAVEFARM_* environment variables (or a .env file).

URLs are SecretStr: they carry passwords, so they print as '**********' and
only `redact_url` decides what part of them a person may see.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAVEFARM_", env_file=".env", extra="ignore")

    # Unset: the zero-setup defaults, an embedded Postgres (orchestrator/embedded_postgres.py)
    # and a local broker (common/local_broker.py) in `data_dir`, for one machine.
    database_url: SecretStr | None = None
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
    return Settings()


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
