"""Settings: what a process uses when a URL is not set (SPEC: the zero-setup defaults)."""

from __future__ import annotations

from pydantic import SecretStr

from common.celery_app import make_app
from common.settings import Settings


def test_no_broker_url_means_the_local_broker_in_the_data_directory(tmp_path):
    url = Settings(broker_url=None, data_dir=tmp_path).require_broker_url()
    assert url == f"filesystem://localhost{tmp_path}/broker"
    app = make_app(url)
    # Celery gets our transport (atomic message files) and the folders under the data directory.
    assert app.conf.broker_transport == "common.local_broker:FilesystemTransport"
    assert app.conf.broker_transport_options["data_folder_in"] == str(tmp_path / "broker" / "messages")
    assert (tmp_path / "broker" / "messages").is_dir()


def test_a_given_broker_url_wins(tmp_path):
    given = Settings(broker_url=SecretStr("amqp://u:p@mq:5672//"), data_dir=tmp_path)
    assert given.require_broker_url() == "amqp://u:p@mq:5672//"
    assert not (tmp_path / "broker").exists()


def test_the_data_directory_defaults_to_the_users(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert Settings(data_dir=None).local_data_dir() == tmp_path / ".local" / "share" / "wavefarm"
