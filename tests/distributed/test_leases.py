"""Worker-name leases on real brokers: one holder at a time, however many ask at once;
free again when the holder ends, however it ends; taken back after the broker lost it;
and a name another worker took meanwhile is given up."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from common.celery_app import make_app
from common.leases import BrokerAway, LeaseKeeper, open_lease
from common.leases.redis import Holder
from tests.distributed.farm import broker, close_connections
from tests.net import free_port

KEY = "script@test-machine"


@pytest.fixture(params=["amqp", "redis", "filesystem"])
def app(request):
    with broker(request.param) as url:
        yield make_app(url)


def wait_until(what: str, predicate, timeout: float = 15.0):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_a_name_has_one_holder_and_is_free_once_released(app):
    first, second = open_lease(app, KEY), open_lease(app, KEY)
    try:
        assert first.acquire()
        assert not second.acquire()
        assert first.renew() and not second.acquire()
        assert open_lease(app, "script-2@test-machine").acquire()  # another name is another lease
        first.release()
        assert second.acquire()
    finally:
        first.release()
        second.release()


def test_of_many_asking_at_the_same_instant_one_gets_the_name(app):
    leases = [open_lease(app, KEY) for _ in range(8)]
    start = threading.Barrier(len(leases))
    got: list[bool] = []

    def ask(lease) -> None:
        start.wait()
        got.append(lease.acquire())

    threads = [threading.Thread(target=ask, args=(lease,)) for lease in leases]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(got) == [False] * 7 + [True]
    finally:
        for lease in leases:
            lease.release()


def test_a_holder_killed_with_sigkill_frees_its_name_for_its_restart(app):
    """What systemd's Restart= does after a crash: the new process must get the name back
    (on Redis, well before the key's time to live runs out)."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from common.celery_app import make_app
        from common.leases import open_lease
        assert open_lease(make_app({app.conf.broker_url!r}), {KEY!r}).acquire()
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        restarted = open_lease(app, KEY)
        assert not restarted.acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        wait_until("the name to be free", restarted.acquire)
        restarted.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_redis_name_held_from_another_machine_is_never_taken_over():
    with broker("redis") as url:
        app = make_app(url)
        client = redis.Redis.from_url(url)
        # A holder whose pid does not run here: on another machine, it may well run there.
        elsewhere = Holder("another-machine", "boot", "pid:[1]", 999_999_999, 1.0)
        client.set(f"wavefarm:worker-name:{KEY}", elsewhere.token(), px=30_000)
        lease = open_lease(app, KEY)
        try:
            assert not lease.acquire()
        finally:
            lease.release()


def test_rabbitmq_dropping_the_connection_frees_the_name_until_renew_takes_it_back():
    with broker("amqp") as url:
        app = make_app(url)
        vhost = url.rsplit("/", 1)[1]
        lease, newcomer = open_lease(app, KEY), open_lease(app, KEY)
        try:
            assert lease.acquire()
            close_connections(vhost)
            # The queue went with the connection: another worker could take the name now ...
            wait_until("the name to be free", lambda: free(app))
            # ... and renew takes it back when no one has.
            assert lease.renew() and not free(app)

            close_connections(vhost)
            wait_until("another worker to take the name", newcomer.acquire)
            assert not lease.renew()
        finally:
            lease.release()
            newcomer.release()


def free(app) -> bool:
    lease = open_lease(app, KEY)
    try:
        return lease.acquire()
    finally:
        lease.release()


class PrivateRedis:
    """A Redis server of this test's own, so that it can be stopped and started."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL)
        wait_until("the private Redis to answer", self._answers)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def _answers(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_connect_timeout=1).ping()
        except redis.ConnectionError:
            return False


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_redis_restart_costs_one_warning_and_the_name_is_held_again(caplog):
    caplog.set_level(logging.INFO, logger="common.leases")
    with private_redis() as server:
        app = make_app(server.url)
        lease = open_lease(app, KEY)
        assert lease.acquire()
        lost = threading.Event()
        keeper = LeaseKeeper(lease, KEY, on_lost=lost.set, every_s=0.1)
        keeper.start()
        try:
            server.stop()
            with pytest.raises(BrokerAway):
                open_lease(app, KEY).acquire()
            time.sleep(1.5)  # many renewals with the broker away
            server.start()   # empty: the restart lost the key
            wait_until("the name to be held again", lambda: redis.Redis.from_url(server.url).exists(
                f"wavefarm:worker-name:{KEY}"))
            assert not open_lease(app, KEY).acquire()
        finally:
            keeper.stop()
    assert not lost.is_set()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and KEY in warnings[0].getMessage()
    assert any("held again" in r.getMessage() for r in caplog.records)


def test_a_name_another_worker_took_while_the_broker_was_away_stops_the_worker():
    with private_redis() as server:
        app = make_app(server.url)
        lease, newcomer = open_lease(app, KEY), open_lease(app, KEY)
        assert lease.acquire()
        server.stop()
        server.start()  # empty: the restart lost the key, and a newcomer asks first
        assert newcomer.acquire()
        lost = threading.Event()
        keeper = LeaseKeeper(lease, KEY, on_lost=lost.set, every_s=0.1)
        keeper.start()
        try:
            assert lost.wait(timeout=15) and keeper.lost
            assert not free(app)  # the newcomer still holds it
        finally:
            keeper.stop()
            newcomer.release()
