"""One line per validation error: the field's dotted path, what is wrong, what to write.

Shared by the suite loader (``config``) and the method registry (a method's parameters), so it
sits below both.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

__all__ = ["describe", "explain", "printable"]


def printable(text: str) -> str:
    """``text`` with each non-printable character (newline, ESC, bidi overrides) escaped the
    way ``repr`` writes it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# Messages for a value of the wrong shape, where pydantic's wording is about Python types.
_UNION_HINTS = {
    "methods": "a method entry is a name such as grpo, or {name: {param: value}} such as "
    "{sdar: {beta: 5.0}}",
}
# Pydantic's tags for the members of a union (e.g. "str", "dict[str,nullable[...]]"); they are
# part of an error's location but not a field a user wrote.
_UNION_TAGS = {"str", "int", "float", "bool", "none"}
# A number YAML 1.1 reads as text: an exponent without a dot in the mantissa (1e-4) or without
# a sign (1.0e5), or any number in quotes.
_NUMBER = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+))(?:[eE]([-+]?)(\d+))?\s*")


_UNION_TAG = re.compile(r"[a-z-]+\[[a-z0-9_,\[\]-]*\]")


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or _UNION_TAG.fullmatch(part) is not None)


def _union_branch(err: dict[str, Any]) -> int | None:
    """Where a union's member tag starts in the error's location, if anywhere. The key an
    unknown-key error is about is the user's, whatever it looks like (``str``, ``x[1]``)."""
    loc = list(err["loc"])
    if err["type"] in ("extra_forbidden", "invalid_key"):
        loc = loc[:-1]
    return next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)


def _kind(value: object) -> str:
    names = {dict: "mapping", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _shown(value: object) -> str:
    """``value`` as repr writes it (control characters escaped), cut to 60 characters."""
    text = "nothing (null)" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number_hint(kind: str, text: str) -> str | None:
    """How to write ``text`` (a string that looks like a number) so YAML reads a number."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    mantissa, sign, exponent = match.groups()
    if exponent is None:
        return f"a quoted number is text; write {text.strip()} without quotes"
    if kind == "int_type" and float(text).is_integer():
        return f"write {int(float(text))}: YAML reads {text.strip()} as text"
    if "." not in mantissa:
        mantissa += ".0"
    return f"write {mantissa}e{sign or '+'}{exponent}: YAML reads {text.strip()} as text"


def _first_error(exc: ValidationError) -> dict[str, Any]:
    """The error to report: the first one, except that a non-finite number among the members
    of the same union is the clearer message (``choice: [.nan]`` is not text, nor a boolean)."""
    errors = exc.errors()
    first = errors[0]
    loc = list(first["loc"])
    branch = _union_branch(first)
    if branch is not None:
        for err in errors:
            if err["type"] == "finite_number" and list(err["loc"])[:branch] == loc[:branch]:
                return err
    return first


def describe(exc: ValidationError, prefix: str = "") -> str:
    """The first validation error as one line: the field's dotted path and what to do.

    ``prefix`` is the path of the model that raised, for models validated on their own (an
    env's settings under ``env_params.<env>``).
    """
    err, loc = _located(exc)
    field = ".".join(str(p) for p in [*([prefix] if prefix else []), *loc])
    message = explain(exc)
    # model-level checks name their field in the message
    return printable(f"{field}: {message}" if field else message)


def _located(exc: ValidationError) -> tuple[dict[str, Any], list[Any]]:
    """The error to report and the location of the value it is about."""
    err = _first_error(exc)
    loc = list(err["loc"])
    branch = _union_branch(err)
    if branch is not None:
        loc = loc[:branch]  # the value matched no member of a union: name the value itself
    return err, loc


def explain(exc: ValidationError) -> str:
    """What is wrong with the first error's value and what to write instead, without the field."""
    err, loc = _located(exc)
    message = err["msg"].removeprefix("Value error, ")
    kind, value = err["type"], err.get("input")
    scalar = value is None or isinstance(value, str | int | float | bool)
    hint = _number_hint(kind, value) if isinstance(value, str) else None
    in_union = len(loc) < len(err["loc"])
    if kind in ("extra_forbidden", "invalid_key"):
        message = "unknown key; remove it or check its spelling"
    elif kind == "missing":
        message = "required; add it"
    elif kind == "finite_number":
        message = f"must be a finite number; got {_shown(value)}"
    elif kind in ("int_type", "float_type") and isinstance(value, bool):
        wanted = "an integer" if kind == "int_type" else "a number"
        message = f"should be {wanted}, not true or false; got {_shown(value)}"
    elif kind == "int_type" and isinstance(value, float):
        message = f"should be a whole number, written without a decimal point; got {value!r}"
    elif kind in ("int_type", "float_type") and hint:
        message = f"{message}; {hint}; got {_shown(value)}"
    elif kind == "too_long" and "max_length" in err.get("ctx", {}):
        ctx = err["ctx"]
        message = (
            f"{ctx['actual_length']:,} items, more than the cap of {ctx['max_length']:,}; "
            "list fewer or split the suite into several"
        )
    elif in_union:
        union_hint = _UNION_HINTS.get(str(loc[0]) if loc else "", "")
        message = f"{union_hint or 'not a valid value'}; got {_shown(value)}"
    elif kind in ("model_type", "dict_type"):
        message = f"should be a mapping {{setting: value}}; got {_shown(value)}"
    elif kind == "list_type":
        example = f"[{value}]" if scalar and value is not None else "[a, b]"
        message = f"should be a list such as {example}; got {_shown(value)}"
    elif scalar and kind != "value_error":
        message = f"{message}; got {_shown(value)}"
    return printable(message)
