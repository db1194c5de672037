"""serve's word to every worker (holds, placement): a Celery remote-control broadcast on a
broker connection and channel of its own.

Not through Celery's `app.control.broadcast` as it is: its mailbox publishes with a
producer from the app's pool, which in serve may be the dispatcher's, whose channel is in
AMQP transaction mode (orchestrator/dispatch.py). A broadcast published there is held
by the broker until the dispatcher's next commit, and when the word it carries is what
the dispatch waits for (a placement: no host consumes the model until it hears), that
commit never comes.
"""

from __future__ import annotations

from celery import Celery
from kombu import Connection


def broadcast(app: Celery, connection: Connection, command: str, arguments: dict, *, reply: bool = False,
              timeout_s: float = 1.0, limit: int | None = None) -> list:
    """Say `command` to every worker on `connection`'s own channel; the replies when asked."""
    mailbox = app.control.mailbox(connection)
    mailbox._producer_pool = None  # a producer on `connection`'s channel, not one of the pool's
    return mailbox._broadcast(command, arguments, reply=reply, timeout=timeout_s, limit=limit,
                              channel=connection.default_channel) or []


class Broadcaster:
    """serve's connection for broadcasts, kept between them."""

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
            broadcast(self.app, self._conn, command, arguments)
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
