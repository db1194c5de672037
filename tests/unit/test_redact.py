"""No password of a URL or DSN reaches a person, however the value is written."""

import pytest

from common.redact import redact, scrub, secrets_of

SECRET = "S3cr3tPw"

HOSTILE = [
    f"postgresql://wf:pa#{SECRET}@127.0.0.1:1/x",          # '#' would start a fragment
    f"postgresql://wf:pa?{SECRET}@127.0.0.1:1/x",          # '?' would start a query
    f"postgresql://wf:{SECRET}@@127.0.0.1/x",              # an '@' too many
    f"postgresql://wf:{SECRET}@127.0.0.1:99999999/x",       # a port that is none
    f"postgres://wf:{SECRET}@[::1:1/x",                     # an IPv6 literal left open
    f"postgresql://127.0.0.1/x?password={SECRET}&sslmode=disable",
    f"host=127.0.0.1 port=1 password={SECRET} dbname=x",
    f"host=h password='{SECRET} with spaces' user=u",
    f"host=h password='unterminated {SECRET}",
    f"amqp://guest:{SECRET}@127.0.0.1:5672//",
    f"redis://:{SECRET}@127.0.0.1:6379/0",
    f"error at amqp://guest:{SECRET}@rabbit:5672// (and postgresql://u:{SECRET}x@db/x)",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_the_password_is_masked_and_the_rest_kept(value):
    shown = redact(value)
    assert SECRET not in shown and "***" in shown
    assert ("127.0.0.1" in shown) == ("127.0.0.1" in value)  # where it points stays readable


@pytest.mark.parametrize("value", HOSTILE)
def test_a_drivers_message_that_quotes_the_password_is_scrubbed(value):
    message = f'invalid connection option: "{value}" near {SECRET}'
    assert SECRET not in scrub(message, secrets_of(value))


def test_a_percent_encoded_password_is_scrubbed_in_both_forms():
    url = "postgresql://wf:pa%23ss%3Fword@h/x"
    assert set(secrets_of(url)) >= {"pa%23ss%3Fword", "pa#ss?word"}
    assert "pa#ss?word" not in scrub("password 'pa#ss?word' refused", secrets_of(url))


def test_what_holds_no_password_is_left_alone():
    for text in ("http://127.0.0.1:11434", "postgresql://postgres@127.0.0.1:5432/x", "no url at all", ""):
        assert redact(text) == text
