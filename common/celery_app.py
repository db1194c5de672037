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
- task events off: they cost CPU on every task, and Flower, the only reader, turns
  them on in every worker while it runs (its --enable-events, the default).
- no result backend: results travel on our reports queue, where the orchestrator
  applies them to Postgres.

`filesystem://` URLs are the local broker of the zero-setup mode: common/local_broker.py.
"""

from __future__ import annotations

import functools

from celery import Celery
from kombu import Exchange, Queue

from common.local_broker import TRANSPORT, is_local_broker, local_broker_options
from common.queues import REPORTS_QUEUE
from common.settings import check_broker_url, get_settings


def make_app(broker_url: str | None = None, *, name: str = "wavefarm", batched_publish: bool = False) -> Celery:
    """`batched_publish` is for the orchestrator: instead of waiting for the broker's
    confirm of every message, the dispatcher publishes a whole turn inside one AMQP
    transaction and waits once, at its commit (orchestrator/dispatch.py)."""
    settings = get_settings()
    url = check_broker_url(broker_url or settings.require_broker_url())
    app = Celery(name, broker=url, set_as_current=False)
    if is_local_broker(url):
        app.conf.broker_transport = TRANSPORT
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Our tasks never raise for a task's own failure (the failure is the result), nor
        # for a message they cannot read (common/intake.py reports that attempt failed):
        # only a bug raises. Celery then rejects the message without requeueing it (it
        # would fail the same way on every worker), and the sweeper takes the attempt
        # back at its deadline.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_delivery_mode="persistent",
        task_create_missing_queues=True,
        worker_send_task_events=False,
        # A "sent" event per dispatched task would double the orchestrator's
        # publishing for little, Flower or not.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # A connection the broker dropped while restarting is noticed within ~2 heartbeats.
        broker_heartbeat=10,
        broker_transport_options=local_broker_options(url) if is_local_broker(url) else {
            # amqp: publish returns once the broker has the message (workers' results).
            "confirm_publish": not batched_publish,
            "visibility_timeout": settings.broker_visibility_timeout_s,  # redis
        },
        broker_channel_error_retry=True,
        # On a lost connection a running call is left to finish: its message comes
        # back from the broker anyway, and the second result is ignored by the guard.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Celery's "reduce the prefetch after a reconnect, restore it as the tasks
        # running through it finish" sends basic.qos from the pool thread that finished
        # the task, on the consumer's connection, while the event loop uses it too. A
        # py-amqp connection is not thread-safe: after a broker restart with calls in
        # flight, the threads steal each other's frames, the worker stops reading and
        # heartbeating, and its messages wait until the broker drops it (30-50 s,
        # measured). Without it the worker takes its full prefetch at once: a few
        # messages more wait in the pool behind the calls still running.
        worker_enable_prefetch_count_reduction=False,
    )
    return app


@functools.cache  # one immutable declaration: built once, not on every result published
def reports_queue() -> Queue:
    return Queue(REPORTS_QUEUE, Exchange(REPORTS_QUEUE, type="direct", durable=True),
                 routing_key=REPORTS_QUEUE, durable=True)
