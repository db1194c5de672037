"""Settings from WAVEFARM_* environment variables (or a .env file).

URLs are SecretStr: they carry passwords, so they print as '**********' and
only `redact_url` decides what part of them a person may see.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAVEFARM_", env_file=".env", extra="ignore")

    database_url: SecretStr | None = None
    broker_url: SecretStr | None = None
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
        return _required(self.broker_url, "WAVEFARM_BROKER_URL",
                         "RabbitMQ (amqp://user:pass@host:5672//) or Redis (redis://host:6379/0)")


def _required(value: SecretStr | None, name: str, what: str) -> str:
    if value is None:
        raise ConfigError(f"{name} is not set: point it at {what}")
    return value.get_secret_value()


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
