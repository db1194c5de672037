"""How a worker tells the orchestrator something: a result or a heartbeat, published
as a persistent JSON message on the reports queue, with retries while the broker is
away. The worker acknowledges its task only after this returns (acks late), so a
result is never lost between the two."""

from __future__ import annotations

from celery import Celery

from common.celery_app import reports_queue
from common.messages import HandBack, HandBackReport, ResultReport, TaskResult, WorkerReport, WorkerStatus
from common.queues import REPORTS_QUEUE

RETRY_POLICY = {"max_retries": None, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 5.0}


def publish_result(app: Celery, result: TaskResult) -> None:
    _publish(app, ResultReport(result=result).model_dump(mode="json"))


def publish_hand_back(app: Celery, hand_back: HandBack) -> None:
    _publish(app, HandBackReport(hand_back=hand_back).model_dump(mode="json"))


def publish_status(app: Celery, status: WorkerStatus, *, retry: bool = True) -> None:
    _publish(app, WorkerReport(status=status).model_dump(mode="json"), retry=retry)


def _publish(app: Celery, body: dict, *, retry: bool = True) -> None:
    queue = reports_queue()
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=queue.exchange,
            routing_key=REPORTS_QUEUE,
            declare=[queue],
            serializer="json",
            delivery_mode=2,
            retry=retry,
            retry_policy=RETRY_POLICY if retry else {"max_retries": 0},
        )
