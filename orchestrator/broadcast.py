"""serve's word to every worker (holds, placement): a Celery remote-control broadcast on a
broker connection of serve's own. Not the dispatcher's: its channel is in transaction
mode, and a broadcast must not wait for (or join) a dispatch turn's commit."""

from __future__ import annotations

from celery import Celery
from kombu import Connection


class Broadcaster:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self._conn: Connection | None = None

    def say(self, command: str, arguments: dict) -> None:
        """Broadcast, without waiting for replies; raises (after letting the connection go)
        when the broker is away: the caller tries again later."""
        try:
            if self._conn is None:
                self._conn = self.app.connection_for_write()
                self._conn.ensure_connection(max_retries=1)
            self.app.control.broadcast(command, arguments=arguments, connection=self._conn, reply=False)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.release()
            except Exception:
                pass
