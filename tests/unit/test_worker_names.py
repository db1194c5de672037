"""Default worker names: unique per (machine, model server), the same after a restart,
safe wherever a name travels."""

from __future__ import annotations

import pytest

from common import worker_names
from common.errors import ConfigError
from common.worker_names import GPU, SCRIPT, candidates, check_name, node_name


def first(role: str, **kw) -> str:
    return candidates(role, machine_name="box", **kw)[0]


@pytest.mark.parametrize("url", ["http://127.0.0.1:11434", "http://localhost:11434", "127.0.0.1:11434",
                                 "http://[::1]:11434", "http://0.0.0.0:11434", "http://box:11434",
                                 "http://BOX:11434/", "http://127.0.0.2:11434/v1"])
def test_a_server_on_this_machine_names_the_worker_by_machine_and_port(url):
    assert first(GPU, server_url=url) == "gpu@box:11434"


def test_one_ollama_per_gpu_on_one_machine_gives_one_name_each():
    names = {first(GPU, server_url=f"http://127.0.0.1:{port}") for port in (11434, 11435, 11436)}
    assert names == {"gpu@box:11434", "gpu@box:11435", "gpu@box:11436"}


def test_a_server_elsewhere_names_both_this_machine_and_the_server():
    assert first(GPU, server_url="http://gpu-b.lan:11434") == "gpu@box:gpu-b.lan:11434"
    # Two remote servers on the same port, driven from one machine: two names.
    assert first(GPU, server_url="http://10.0.0.7:8000/v1") != first(GPU, server_url="http://10.0.0.8:8000/v1")
    # The same server driven from two machines: two names.
    from_a, from_b = (candidates(GPU, machine_name=m, server_url="http://gpu-b:1")[0] for m in ("a", "b"))
    assert from_a != from_b


def test_a_url_without_a_port_takes_its_schemes():
    assert first(GPU, server_url="https://models.example.com") == "gpu@box:models.example.com:443"
    assert first(GPU, server_url="http://models.example.com") == "gpu@box:models.example.com:80"


def test_no_password_or_path_of_the_url_reaches_the_name():
    name = first(GPU, server_url="https://user:s3cret@Models.Example.com:8443/v1?key=abc")
    assert name == "gpu@box:models.example.com:8443"


def test_an_ipv6_server_keeps_its_colons_out_of_the_name():
    assert first(GPU, server_url="http://[fe80::1]:8000") == "gpu@box:fe80--1:8000"


def test_a_script_worker_is_named_by_its_machine():
    assert candidates(SCRIPT, machine_name="box")[:3] == ["script@box", "script-2@box", "script-3@box"]


def test_a_name_already_live_makes_way_for_numbered_ones_all_distinct_and_valid():
    names = candidates(GPU, machine_name="box", server_url="http://127.0.0.1:11434")
    assert names[:2] == ["gpu@box:11434", "gpu-2@box:11434"]
    assert len(set(names)) == len(names) == worker_names.MAX_INDEX
    assert all(check_name(n) == n and node_name(n) == n for n in names)


def test_the_same_machine_and_server_give_the_same_names_after_a_restart():
    url = "http://127.0.0.1:11434"
    assert candidates(GPU, server_url=url) == candidates(GPU, server_url=url)


def test_an_odd_hostname_is_made_safe(monkeypatch):
    monkeypatch.setattr(worker_names.socket, "gethostname", lambda: "Lab PC/2 (GPU)")
    name = candidates(SCRIPT)[0]
    assert name == "script@Lab-PC-2--GPU" and check_name(name) == name


@pytest.mark.parametrize("name", ["gpu-a", "gpu@box-2", "scripts_1", "gpu@box:11434", "a.b-c@d.e"])
def test_a_name_given_with_name_may_be_any_safe_name(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a@b@c", "gpu@%h", "two words", "gpu@", "x" * 201, "ünï"])
def test_a_name_that_cannot_travel_everywhere_is_refused_with_an_example(name):
    with pytest.raises(ConfigError, match="cannot be a worker name.*e.g. gpu-b"):
        check_name(name)


def test_a_name_without_host_part_is_the_node_celery_makes_of_it():
    # Celery runs --hostname=gpu-a as celery@gpu-a: that is what two workers may not share.
    assert node_name("gpu-a") == "celery@gpu-a"
