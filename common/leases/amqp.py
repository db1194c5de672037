"""RabbitMQ: a name is an exclusive queue, declared on a connection of its own.

RabbitMQ lets one connection at a time hold an exclusive queue (a second declaration
gets RESOURCE_LOCKED) and deletes it when that connection closes: at once when the
process ends, however it ends (the kernel closes the socket), or when the broker misses
the connection's heartbeats (the machine is gone). A broker restart drops it with the
connection; `renew` connects again and declares it again.

Its own connection, not the worker's: Celery's consumer reconnects on its own schedule,
and a name must be known before Celery starts.
"""

from __future__ import annotations

from amqp.exceptions import ResourceLocked
from celery import Celery
from kombu import Connection, Queue

from common.leases.base import BrokerAway, Lease

# A blocked read or write (a broker that vanished without closing the socket) ends
# after this long instead of stalling the keeper.
IO_TIMEOUT_S = 10.0


class AmqpLease(Lease):
    def __init__(self, app: Celery, key: str) -> None:
        super().__init__(key)
        self._app = app
        self._queue = Queue(f"wavefarm.worker-name.{key}", exclusive=True, auto_delete=True, durable=False)
        self._conn: Connection | None = None
        self._channel = None

    def acquire(self) -> bool:
        self.release()
        conn = self._app.connection_for_write(
            heartbeat=self._app.conf.broker_heartbeat,
            transport_options={"read_timeout": IO_TIMEOUT_S, "write_timeout": IO_TIMEOUT_S})
        try:
            conn.connect()
            channel = conn.channel()
            self._queue.bind(channel).queue_declare()
        except ResourceLocked:
            conn.release()
            return False
        except (*conn.connection_errors, *conn.channel_errors, OSError) as exc:
            conn.release()
            raise BrokerAway(f"{type(exc).__name__}: {exc}") from None
        self._conn, self._channel = conn, channel
        return True

    def renew(self) -> bool:
        if self._conn is not None:
            try:
                self._conn.heartbeat_check()
                self._queue.bind(self._channel).queue_declare(passive=True)
                return True
            except (*self._conn.connection_errors, *self._conn.channel_errors, OSError):
                pass  # the connection (and with it the queue) is gone: declare it again
        return self.acquire()

    def release(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # closing a dead connection: nothing is held there anyway
                pass
