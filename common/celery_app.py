"""The one Celery app factory: the orchestrator publishes with it, workers consume with it.

The settings below are chosen for correctness, not speed (docs/operations.md says why
each matters):

- acks late + reject on worker lost: a task message is acknowledged only after its
  result was published, so a worker killed mid-call gives its message back to the
  broker, which hands it to another consumer.
- prefetch multiplier 1: a GPU worker holds at most `concurrency` messages; the rest
  stay in the queue where another host can take them.
- persistent messages on durable queues, publisher confirms: a broker restart keeps
  what it acknowledged.
- task events on: Flower sees every task of every worker.
- no result backend: results travel on our reports queue, where the orchestrator
  applies them to Postgres.

`filesystem://localhost/DIR` is the local broker of the zero-setup mode (`orchestrator demo`,
docs/embedded.md): kombu's filesystem transport, one file per message under DIR, for
processes on one machine. It has no acknowledgements (a message leaves its folder when
it is taken) and no transactions: a worker killed mid-call loses its message, and the
sweeper sends the work again after its deadline.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic
from urllib.parse import quote, unquote, urlsplit

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from common.queues import REPORTS_QUEUE
from common.settings import get_settings


def make_app(broker_url: str | None = None, *, name: str = "wavefarm", batched_publish: bool = False) -> Celery:
    """`batched_publish` is for the orchestrator: instead of waiting for the broker's
    confirm of every message, the dispatcher publishes a whole turn inside one AMQP
    transaction and waits once, at its commit (orchestrator/dispatch.py)."""
    settings = get_settings()
    url = broker_url or settings.require_broker_url()
    app = Celery(name, broker=url, set_as_current=False)
    if url.startswith("filesystem:"):
        app.conf.broker_transport = f"{__name__}:FilesystemTransport"
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Our tasks never raise for a task's own failure (the failure is the result);
        # a raise is a crash before the result was published: keep the message.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_delivery_mode="persistent",
        task_create_missing_queues=True,
        worker_send_task_events=True,
        # Flower learns of every task from the workers' events; a "sent" event per
        # dispatched task would double the orchestrator's publishing for little.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # A connection the broker dropped while restarting is noticed within ~2 heartbeats.
        broker_heartbeat=10,
        broker_transport_options=_filesystem_options(url) if url.startswith("filesystem:") else {
            # amqp: publish returns once the broker has the message (workers' results).
            "confirm_publish": not batched_publish,
            "visibility_timeout": settings.broker_visibility_timeout_s,  # redis
        },
        broker_channel_error_retry=True,
        # On a lost connection a running call is left to finish: its message comes
        # back from the broker anyway, and the second result is ignored by the guard.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def filesystem_broker_url(directory: Path) -> str:
    """The URL of the local broker kept in `directory`: filesystem://localhost/DIR
    (kombu warns about a URL without a host)."""
    return "filesystem://localhost" + quote(str(directory.resolve()))


# Seconds between looks at the folder when it is empty: each hop of a result
# (dispatch, worker, report) waits half of it on average.
FILESYSTEM_POLL_S = 0.05


def _filesystem_options(url: str) -> dict:
    path = unquote(urlsplit(url).path)
    if not path or path == "/":
        raise ValueError("a filesystem broker URL names its directory: filesystem://localhost/path/to/broker")
    messages, exchanges = Path(path) / "messages", Path(path) / "exchanges"
    messages.mkdir(parents=True, exist_ok=True)
    exchanges.mkdir(parents=True, exist_ok=True)
    # The same folder in and out: every process reads what every other one writes.
    return {"data_folder_in": str(messages), "data_folder_out": str(messages), "control_folder": str(exchanges),
            "polling_interval": FILESYSTEM_POLL_S}


class FilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel, except that a message file appears whole. kombu
    creates the file, then writes into it: a consumer listing the folder in between
    takes an empty message (a JSONDecodeError that stops a Celery worker) and the
    message is lost. Here it is written under a name no queue reads, then renamed."""

    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        try:
            with open(final + ".part", "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(final + ".part", final)
        except OSError as exc:
            raise ChannelError(f"cannot add a message to {self.data_folder_out}") from exc


class FilesystemTransport(filesystem.Transport):
    Channel = FilesystemChannel


def reports_queue() -> Queue:
    return Queue(REPORTS_QUEUE, Exchange(REPORTS_QUEUE, type="direct", durable=True),
                 routing_key=REPORTS_QUEUE, durable=True)
