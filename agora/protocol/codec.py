"""Decoding request bodies and query strings into msgspec types, reporting *every* bad field.

msgspec stops at the first error. The fast path decodes straight into the type; only when that
fails do we decode to plain JSON and check each field on its own, so the error envelope can name
every bad field with its own message (the contract asks for all of them, not only the first).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from agora.errors import AppError, ErrorCode, invalid

T = TypeVar("T")

encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}

_PATH_SUFFIX = re.compile(r" - at `\$(.*)`$")


def _decoder(tp: type[T]) -> msgspec.json.Decoder[T]:
    dec = _decoders.get(tp)
    if dec is None:
        dec = _decoders[tp] = msgspec.json.Decoder(tp)
    return dec


_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
}
_LENGTH = re.compile(r"^Expected `(str|array|object)` of length (>=|<=) (\d+)$")
_BOUND = re.compile(r"^Expected `(int|float)` (>=|<=|>|<) (-?[\d.]+)$")
_WRONG_TYPE = re.compile(r"^Expected `([^`]+)`, got `([^`]+)`$")


def humanize(message: str, description: str | None = None) -> str:
    """Turn msgspec's wording into a sentence for a person, without the JSON path."""
    message = _PATH_SUFFIX.sub("", message)
    if "matching regex" in message or message.startswith("Invalid enum value"):
        return f"must be {description}" if description else message.replace("Invalid", "invalid")
    if m := _LENGTH.match(message):
        unit = "characters" if m.group(1) == "str" else "items"
        word = "at least" if m.group(2) == ">=" else "at most"
        return f"must be {word} {m.group(3)} {unit}"
    if m := _BOUND.match(message):
        word = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}[m.group(2)]
        return f"must be {word} {m.group(3)}"
    if m := _WRONG_TYPE.match(message):
        expected = " or ".join(_TYPE_NAMES.get(t.strip(), t.strip()) for t in m.group(1).split("|"))
        return f"must be {expected}, not {_TYPE_NAMES.get(m.group(2), m.group(2))}"
    return message


def _description(tp: Any) -> str | None:
    for meta in getattr(tp, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and meta.description:
            return meta.description
    for arg in getattr(tp, "__args__", ()):  # Optional[Annotated[...]] and unions
        found = _description(arg)
        if found:
            return found
    return None


def _field_errors(tp: type, data: Any, *, strict: bool) -> dict[str, str]:
    if not isinstance(data, dict):
        return {"$": f"expected a JSON object, got {type(data).__name__}"}
    errors: dict[str, str] = {}
    for info in msgspec.structs.fields(tp):
        name = info.encode_name
        if name not in data:
            if info.required:
                errors[name] = "this field is required"
            continue
        try:
            msgspec.convert(data[name], info.type, strict=strict)
        except msgspec.ValidationError as exc:
            inner = _PATH_SUFFIX.search(str(exc))
            where = inner.group(1) if inner else ""
            item_type = _item_type(info.type)
            if _INDEX.fullmatch(where) and item_type is not None:
                # Bad items of a list: name each one, with the item's rules.
                description = _description(item_type)
                for i, item in enumerate(data[name]):
                    try:
                        msgspec.convert(item, item_type, strict=strict)
                    except msgspec.ValidationError as item_exc:
                        errors[f"{name}[{i}]"] = humanize(str(item_exc), description)
            else:
                errors[name] = humanize(str(exc), _description(info.type))
    return errors


_INDEX = re.compile(r"\[\d+\]")


def _item_type(tp: Any) -> Any:
    """The item type of a list annotation, through ``Annotated`` and ``Optional``."""
    while getattr(tp, "__metadata__", None) is not None:  # Annotated[X, ...] -> X
        tp = tp.__origin__
    for arg in getattr(tp, "__args__", ()):
        if getattr(tp, "__origin__", None) is list:
            return arg
        if arg is not type(None):
            found = _item_type(arg)
            if found is not None:
                return found
    return None


def _whole_struct_error(tp: type, data: Any, *, strict: bool) -> dict[str, str]:
    try:
        msgspec.convert(data, tp, strict=strict)
    except msgspec.ValidationError as exc:
        return {"$": humanize(str(exc))}
    return {}


def _not_json(exc: msgspec.DecodeError) -> AppError:
    return AppError(
        ErrorCode.VALIDATION_ERROR,
        "the request body is not valid JSON",
        status=400,
        fields={"$": humanize(str(exc))},
    )


NUL_MESSAGE = "must not contain NUL characters (\\u0000)"


def nul_fields(raw: bytes) -> list[str]:
    """The top-level fields of a JSON document whose strings (keys included, at any depth)
    hold a NUL character, which PostgreSQL cannot store in text; ``$`` for the document itself.
    JSON carries NUL only as the escape ``\\u0000``, so documents without one cost one scan.
    A document nested too deeply to decode raises ``RecursionError``: callers refuse it."""
    if b"\\u0000" not in raw:
        return []
    try:
        data = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        return []  # not JSON: reported as such by the caller's decoder

    def has_nul(value: Any) -> bool:  # iterative: a hostile document may nest 100,000 deep
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if "\x00" in item:
                    return True
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
        return False

    if isinstance(data, dict):
        return [str(k) for k, v in data.items() if has_nul(k) or has_nul(v)]
    return ["$"] if has_nul(data) else []


TOO_DEEP = "nested too deeply"


def decode_body(tp: type[T], raw: bytes) -> T:
    """Decode a JSON request body into ``tp`` or raise the ``validation_error`` envelope."""
    try:
        return _decode_body(tp, raw)
    except RecursionError:  # msgspec's answer to [[[[...]]]] 100,000 deep, even in unknown fields
        raise AppError(
            ErrorCode.VALIDATION_ERROR,
            "the request body is not valid JSON",
            status=400,
            fields={"$": TOO_DEEP},
        ) from None


def _decode_body(tp: type[T], raw: bytes) -> T:
    try:
        value = _decoder(tp).decode(raw)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise _not_json(exc) from None
    else:
        if bad := nul_fields(raw):
            raise invalid(dict.fromkeys(bad, NUL_MESSAGE))
        return value
    try:
        data = _any_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # a type error came before the syntax error
        raise _not_json(exc) from None
    errors = _field_errors(tp, data, strict=True) or _whole_struct_error(tp, data, strict=True)
    for name in nul_fields(raw):
        errors.setdefault(name, NUL_MESSAGE)
    raise invalid(errors)


def convert_query(tp: type[T], params: Mapping[str, str]) -> T:
    """Convert query-string parameters (all strings) into ``tp``; bad ones answer 400."""
    data = dict(params)
    try:
        return msgspec.convert(data, tp, strict=False)
    except msgspec.ValidationError:
        errors = _field_errors(tp, data, strict=False) or _whole_struct_error(
            tp, data, strict=False
        )
        raise AppError(
            ErrorCode.VALIDATION_ERROR, "the query string is not valid", status=400, fields=errors
        ) from None


def encode(value: Any) -> bytes:
    return encoder.encode(value)
