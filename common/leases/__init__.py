"""Worker names held on the broker: a worker claims its name at start-up and holds it
for its lifetime, so that no two live workers share one (on RabbitMQ, two would fight
for Celery's exclusive pidbox queue in a restart loop; on Redis, they would be one row
of the `workers` table).

`claim` is the start: a name given with --name is held or refused; without one, the
first default name (common.worker_names) no live worker holds is taken. `LeaseKeeper`
(keeper.py) holds it from then on. One module per broker says how: amqp.py, redis.py,
filesystem.py (the local broker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from celery import Celery

from common.errors import ConfigError
from common.leases.base import BrokerAway, Lease, NameTaken
from common.leases.keeper import LeaseKeeper
from common.local_broker import is_local_broker, local_broker_dir
from common.redact import redact
from common.worker_names import check_name, node_name

__all__ = ["BrokerAway", "Lease", "LeaseKeeper", "NameTaken", "claim", "open_lease"]

log = logging.getLogger(__name__)

AMQP_SCHEMES = {"amqp", "amqps", "pyamqp"}
REDIS_SCHEMES = {"redis", "rediss", "redis+socket"}
WAIT_MAX_S = 10.0


def open_lease(app: Celery, key: str) -> Lease:
    """A lease on `key` on the broker of `app`, not yet acquired."""
    url = app.conf.broker_url
    if is_local_broker(url):
        from common.leases.filesystem import FileLease

        return FileLease(local_broker_dir(url), key)
    scheme = urlsplit(url).scheme
    if scheme in AMQP_SCHEMES:
        from common.leases.amqp import AmqpLease

        return AmqpLease(app, key)
    if scheme in REDIS_SCHEMES:
        from common.leases.redis import RedisLease

        return RedisLease(url, key)
    raise ConfigError(f"a {scheme}:// broker cannot tell whether a worker name is taken: "
                      "use RabbitMQ (amqp://), Redis (redis://) or the local broker")


def claim(app: Celery, name: str | None, defaults: Sequence[str]) -> tuple[str, Lease]:
    """The worker's name and the lease that holds it: `name` (from --name) if no live
    worker has it, else the first of `defaults` that is free. Waits for a broker that
    cannot be reached (as Celery does at start-up); raises NameTaken when none is free."""
    candidates = [check_name(name)] if name else list(defaults)
    waited = 0.0
    while True:
        try:
            for candidate in candidates:
                lease = open_lease(app, node_name(candidate))
                if lease.acquire():
                    log.info("this worker is %s", candidate)
                    return candidate, lease
                lease.release()
            break
        except BrokerAway as exc:
            if not waited:
                log.warning("waiting for the broker at %s to claim a worker name (%s)",
                            redact(app.conf.broker_url), exc)
            pause = min(WAIT_MAX_S, 1.0 + waited / 2)
            time.sleep(pause)
            waited += pause
    if name:
        raise NameTaken(f"worker name {name!r} is taken by a live worker on this broker: give this worker "
                        "another --name, or none for a free default name")
    raise NameTaken(f"no free worker name: {candidates[0]} and its {len(candidates) - 1} numbered variants are "
                    "all taken by live workers on this broker: give this worker a --name")
