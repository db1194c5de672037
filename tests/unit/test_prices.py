"""Prices as typed, and amounts as shown (orchestrator/prices.py); the arithmetic of a cost
is the database's (tests/integration/test_cost_and_cache.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from orchestrator.prices import MAX_PRICE, PriceError, check_model, parse_amount, plain


@pytest.mark.parametrize("text", ["0", "0.5", " 2.25 ", "1e3", str(MAX_PRICE)])
def test_plain_prices_are_taken_exactly(text):
    assert parse_amount(text, "--per-hour") == Decimal(text.strip())
    assert parse_amount(None, "--per-hour") is None


@pytest.mark.parametrize("text,why", [
    ("nan", "finite"), ("NaN", "finite"), ("inf", "finite"), ("-Infinity", "finite"),
    ("1e400", "past"), ("1000000001", "past"), ("-1", "negative"), ("-0.01", "negative"),
    ("", "not a number"), ("abc", "not a number"), ("0x10", "not a number"), ("1,5", "not a number"),
])
def test_hostile_prices_are_refused_naming_the_option(text, why):
    with pytest.raises(PriceError) as caught:
        parse_amount(text, "--input-per-1m")
    assert caught.value.option == "--input-per-1m"
    assert why in str(caught.value) and str(caught.value).startswith("--input-per-1m: ")


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "gemma2\n", "x\x1b[31m", "m" * 301])
def test_model_names_that_cannot_be_stored_or_shown_are_refused(name):
    with pytest.raises(PriceError, match="MODEL"):
        check_model(name)


def test_a_name_with_markup_is_a_name_like_any_other():
    assert check_model("[bold]x[/bold]") == "[bold]x[/bold]"
    assert check_model(" qwen2.5:7b ") == "qwen2.5:7b"


@pytest.mark.parametrize("value,shown", [
    (Decimal("0.50000000000000000000"), "0.5"), (Decimal("2.8"), "2.8"), (Decimal("0.0000055"), "0.0000055"),
    (Decimal("1E+3"), "1000"), (Decimal(0), "0"), (None, ""), (3, "3"), (0.1, "0.1"), (Decimal("1.23456789"), "1.2346"),
    (Decimal("0.007432855489"), "0.007433"), (Decimal("-0.5"), "-0.5"),
])
def test_numbers_are_shown_plain(value, shown):
    assert plain(value) == shown


def test_a_price_or_a_limit_as_typed_is_shown_whole():
    assert plain(Decimal("0.123456789"), exact=True) == "0.123456789"
    assert plain(Decimal("1E+3"), exact=True) == "1000"


def test_status_knows_the_pause_reason_budget_sets():
    from orchestrator import budget, cost

    assert cost.BUDGET_EXCEEDED == budget.BUDGET_EXCEEDED
