"""What a person may see of a URL, a DSN, or a text that quotes one: the one place
that decides. Every message that can carry a setting goes through `redact` (or
`scrub`, when the exact secrets are known), and neither ever raises, however
malformed the value: a bad port or an unencoded '#' must not turn a message into
a crash, nor leak what follows it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
_PIECES = re.compile(r"[#?@/:&;=\s'\"]+")

# scheme://user:password@host — the password is everything between the first ':' after
# the user and the LAST '@' of the token, so a password holding '#', '?', '/' or '@'
# (unencoded, as people paste them) is masked whole, not cut where a parser would stop.
_URL = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):(?P<secret>[^\s]*)@")
# key=value DSNs and URL query strings: password=..., sslpassword=..., quoted or not.
# A quote left open runs to the end: all of it is the secret.
_KEYED = re.compile(r"(?P<key>\b(?:ssl)?pass(?:word)?\s*=\s*)"
                    r"(?P<secret>'(?:[^'\\]|\\.)*(?:'|$)|\"(?:[^\"\\]|\\.)*(?:\"|$)|[^\s&;]+)",
                    re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password of a URL or DSN in it masked."""
    if not isinstance(text, str):
        text = str(text)
    text = _URL.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _KEYED.sub(lambda m: f"{m['key']}{MASK}", text)


def secrets_of(value: str | None) -> list[str]:
    """The passwords a URL or DSN holds, as written and percent-decoded: what must be
    scrubbed from any text about it that we did not write ourselves (a driver's error
    may quote the password in another form than the URL did)."""
    if not value:
        return []
    found = [m["secret"] for m in _URL.finditer(value)]
    found += [m["secret"].strip("'\"") for m in _KEYED.finditer(value)]
    secrets = {s for s in found if s}
    secrets |= {unquote(s) for s in secrets}
    # A parser that stopped at an unencoded '#', '?', '@' or a space quotes only a piece.
    secrets |= {piece for s in secrets for piece in _PIECES.split(s) if len(piece) >= 4}
    return sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True)  # longest first


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with each of `secrets` masked wherever it appears, then redacted."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return redact(text)
