"""Kubernetes' CEL quantity library for cel-python, so the offline tier runs our rules.

The API server's CEL environment has ``quantity(s)``, ``isQuantity(s)`` and methods on the
result (``compareTo``, ``isGreaterThan``, ``isLessThan``, ``sign``); cel-python has none of
them.  Values are parsed to exact decimals with resource.Quantity's grammar and suffixes,
which is all the comparisons our rules make need.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from celpy import celtypes

_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_GRAMMAR = re.compile(
    rf"^(?P<number>[+-]?{_NUMBER})(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?{_NUMBER})?$"
)
_BINARY = {f"{p}i": Decimal(1024) ** (i + 1) for i, p in enumerate("KMGTPE")}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


class Quantity:
    """A parsed quantity (its exact value)."""

    def __init__(self, value: Decimal) -> None:
        self.value = value


def _parse(text: str) -> Decimal | None:
    match = _GRAMMAR.match(text)
    if not match:
        return None
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["number"])
        if suffix[:1] in ("e", "E"):
            return number * Decimal(10) ** Decimal(suffix[1:])
    except InvalidOperation:
        return None
    return number * (_BINARY.get(suffix) or _DECIMAL[suffix])


def quantity(text: Any) -> Quantity:
    value = _parse(str(text))
    if value is None:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    return Quantity(value)


def is_quantity(text: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_parse(str(text)) is not None)


def compare_to(a: Quantity, b: Quantity) -> celtypes.IntType:
    return celtypes.IntType((a.value > b.value) - (a.value < b.value))


def is_greater_than(a: Quantity, b: Quantity) -> celtypes.BoolType:
    return celtypes.BoolType(a.value > b.value)


def is_less_than(a: Quantity, b: Quantity) -> celtypes.BoolType:
    return celtypes.BoolType(a.value < b.value)


def sign(a: Quantity) -> celtypes.IntType:
    return celtypes.IntType((a.value > 0) - (a.value < 0))


#: Name -> implementation, as cel-python's ``functions=`` takes them (a method call
#: ``q.compareTo(r)`` is the function ``compareTo(q, r)``).
FUNCTIONS = {
    "quantity": quantity,
    "isQuantity": is_quantity,
    "compareTo": compare_to,
    "isGreaterThan": is_greater_than,
    "isLessThan": is_less_than,
    "sign": sign,
}
