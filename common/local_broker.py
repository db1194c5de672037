"""The local broker of the zero-setup mode: kombu's filesystem transport, one file per
message under one directory, for the farm's processes on one machine (`orchestrator
demo`, or any command run without WAVEFARM_BROKER_URL).

It has no acknowledgements (a message leaves its folder when it is taken) and no
transactions: a worker killed mid-call loses its message, and the sweeper sends the
work again after its deadline. docs/embedded.md has the measurements behind the choice.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic
from urllib.parse import quote, unquote, urlsplit

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = f"{__name__}:FilesystemTransport"


def is_local_broker(url: str) -> bool:
    return url.startswith("filesystem:")


def local_broker_url(directory: Path) -> str:
    """The URL of the local broker kept in `directory`: filesystem://localhost/DIR
    (kombu warns about a URL without a host)."""
    return "filesystem://localhost" + quote(str(directory.resolve()))


# Seconds between looks at the folder when it is empty: each hop of a result
# (dispatch, worker, report) waits half of it on average.
FILESYSTEM_POLL_S = 0.05


def local_broker_dir(url: str) -> Path:
    """The directory a filesystem:// URL names."""
    path = unquote(urlsplit(url).path)
    if not path or path == "/":
        raise ValueError("a filesystem broker URL names its directory: filesystem://localhost/path/to/broker")
    return Path(path)


def local_broker_options(url: str) -> dict:
    directory = local_broker_dir(url)
    messages, exchanges = directory / "messages", directory / "exchanges"
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
