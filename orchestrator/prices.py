"""The fleet's prices per model (`orchestrator prices set|list`) and the arithmetic of a cost.

A price is whatever currency the user means; wavefarm prints plain numbers. Every `set`
is a new row of `prices` (the fields it does not name carried over from the model's
latest row), so an attempt keeps the cost of the prices in force when it was recorded.
Model names are canonical through the database's `wavefarm_model` (`gemma2` is
`gemma2:latest`): this module never repeats that rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from common.errors import WavefarmError
from orchestrator.db.store import Store

# No real price comes near: a typo (a missing decimal point, a pasted id) or a value
# meant to break the arithmetic (1e400) is refused where it is typed.
MAX_PRICE = Decimal(1_000_000_000)
MAX_MODEL_CHARS = 300
FIELDS = {"input_per_1m": "--input-per-1m", "output_per_1m": "--output-per-1m", "per_hour": "--per-hour"}


class PriceError(WavefarmError):
    """A price or model name that cannot be stored; `option` says which was typed wrong."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(f"{option}: {message}" if option else message)
        self.option = option
        self.reason = message


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    input_per_1m: Decimal | None
    output_per_1m: Decimal | None
    per_hour: Decimal | None
    set_at: datetime


def parse_amount(text: str | None, option: str, *, maximum: Decimal = MAX_PRICE) -> Decimal | None:
    """A price (or a credit limit) as typed: a finite number from 0 to `maximum`, exactly
    as written (a Decimal: 0.1 stays 0.1)."""
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise PriceError(f"{text!r} is not a number (write e.g. 0.5)", option) from None
    if not value.is_finite():
        raise PriceError(f"{text!r} is not a finite number", option)
    if value < 0:
        raise PriceError(f"{text!r} is negative: it must be 0 or more", option)
    if value > maximum:
        raise PriceError(f"{text!r} is past {maximum:,} (no amount is that high: a typo?)", option)
    return value


def check_model(name: str) -> str:
    """A model name that can be stored and shown: not blank, no control characters (a NUL
    cannot be stored), not longer than any model's name. Anything else (brackets too) is
    part of a name and shown as text."""
    if not name.strip():
        raise PriceError("the model name is empty", "MODEL")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise PriceError(f"{name!r} holds control characters (a NUL, a newline): not a model name", "MODEL")
    if len(name) > MAX_MODEL_CHARS:
        raise PriceError(f"a name of {len(name)} characters is not a model name (at most {MAX_MODEL_CHARS})", "MODEL")
    return name.strip()


def set_price(store: Store, model: str, *, input_per_1m: Decimal | None = None,
              output_per_1m: Decimal | None = None, per_hour: Decimal | None = None) -> Price:
    """A new price row for `model`, the fields not given carried over from its latest row."""
    if input_per_1m is None and output_per_1m is None and per_hour is None:
        raise PriceError("give at least one of --input-per-1m, --output-per-1m, --per-hour")
    for option, value in ((FIELDS["input_per_1m"], input_per_1m), (FIELDS["output_per_1m"], output_per_1m),
                          (FIELDS["per_hour"], per_hour)):
        if value is not None and not (value.is_finite() and 0 <= value <= MAX_PRICE):
            raise PriceError(f"{value} is not a price from 0 to {MAX_PRICE:,}", option)
    with store.transaction():
        return store.one("insert_price", {"model": check_model(model), "input_per_1m": input_per_1m,
                                          "output_per_1m": output_per_1m, "per_hour": per_hour}, Price)


def in_force(store: Store) -> list[Price]:
    """Each model's prices in force (its latest row), by model name."""
    return store.all("prices_in_force", None, Price)


def plain(value: Decimal | float | int | None, *, exact: bool = False) -> str:
    """A number as a person reads it: no exponent, no trailing zeros; '' for None. A cost
    is rounded to 4 decimals, or below 1 to 4 significant digits (a call's 0.0000055 is
    shown as such, a batch's 0.007432855489 as 0.007433); `exact` (a price or a limit as
    typed) is shown whole."""
    if value is None:
        return ""
    d = value if isinstance(value, Decimal) else Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
    if not exact and d:
        places = 4 if abs(d) >= 1 else 3 - d.adjusted()
        d = d.quantize(Decimal(10) ** -places)
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "") else text


def number(value: Decimal | None) -> float | None:
    """A Decimal as a JSON number (status --json, cache stats --json)."""
    return None if value is None else float(value)
