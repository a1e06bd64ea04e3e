"""Value checks for the schema, as pydantic validators that speak the project's error format.

pydantic's own messages ("Input should be greater than 0") name neither the key as the user typed it nor
the model-dependent reason for a bound, so every field uses one of these validators: each says what is
allowed in words ("an integer ≥ 1 and ≤ 128 (the model's hidden size is 128)") and `one_line` turns the
first error into `key=value: must be …`. Bounds may depend on the chosen model: they are then functions of
the validation context (the validated `model` section).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError

Context = dict[str, Any]
Limit = float | int | Callable[[Context], float] | None
Note = str | Callable[[Context], str] | None
KIND = "tunegrid"  # the pydantic error type of these validators


class Section(BaseModel):
    """A config group or sub-node: unknown keys are errors (a typo must not train with the default)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, arbitrary_types_allowed=True, defer_build=True
    )


class Unresolved:
    """A value whose interpolation failed; validators report it as `key: cannot be resolved (…)`."""

    def __init__(self, error: BaseException):
        self.reason = (
            f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        )


def bad(value: Any, allowed: str) -> PydanticCustomError:
    return PydanticCustomError(KIND, "must be {allowed}", {"allowed": allowed, "shown": repr(value)})


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _at(x: Any, ctx: Context) -> Any:
    return x(ctx) if callable(x) else x


def _describe(kind: type, lo, hi, lo_open: bool, hi_open: bool, optional: bool, note: str | None) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {_fmt(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '≤'} {_fmt(hi)}")
    name = "an integer" if kind is int else "a number"
    text = f"{name} {' and '.join(parts)}".strip() + (" or null" if optional else "")
    return f"{text} ({note})" if note else text


def _check_unresolved(value: Any) -> None:
    if isinstance(value, Unresolved):
        raise PydanticCustomError(
            KIND + "_unresolved", "cannot be resolved ({reason})", {"reason": value.reason}
        )


def number(
    kind: type = float,
    lo: Limit = None,
    hi: Limit = None,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
    note: Note = None,
    allowed: str | None = None,
) -> Any:
    """An int or float field within [lo, hi] (open ends with lo_open / hi_open); booleans, strings and
    non-finite numbers are refused. The value is returned unchanged (the resolved config stays as composed)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        _check_unresolved(value)
        ctx = info.context or {}
        lo_, hi_ = _at(lo, ctx), _at(hi, ctx)
        text = allowed or _describe(kind, lo_, hi_, lo_open, hi_open, optional, _at(note, ctx))
        if value is None:
            if optional:
                return None
            raise bad(value, text)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(value, text)
        if (kind is int and isinstance(value, float) and not value.is_integer()) or not math.isfinite(value):
            raise bad(value, text)
        shown = kind(value)
        if lo_ is not None and (shown < lo_ or (lo_open and shown == lo_)):
            raise bad(shown, text)
        if hi_ is not None and (shown > hi_ or (hi_open and shown == hi_)):
            raise bad(shown, text)
        return value

    return Annotated[Any, PlainValidator(check)]


def integer(lo: Limit = None, hi: Limit = None, **kw: Any) -> Any:
    return number(int, lo, hi, **kw)


def _show(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def choice(options: Sequence[Any] | Callable[[Context], Sequence[Any]]) -> Any:
    """One of a fixed list of values (compared as text: Hydra parses `true` as a bool, `8` as an int)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        _check_unresolved(value)
        shown = [_show(v) for v in _at(options, info.context or {})]
        if value is None or isinstance(value, dict | list) or _show(value) not in shown:
            raise bad(value, "one of " + ", ".join(shown))
        return value

    return Annotated[Any, PlainValidator(check)]


def _flag(value: Any) -> Any:
    _check_unresolved(value)
    if not isinstance(value, bool):
        raise bad(value, "true or false")
    return value


def _text(optional: bool, empty: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        _check_unresolved(value)
        if value is None and optional:
            return None
        if not isinstance(value, str) or (not empty and not value.strip()):
            what = "a string" if empty else "a non-empty string"
            raise bad(value, what + (" or null" if optional else ""))
        return value

    return check


def _texts(optional: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        _check_unresolved(value)
        if value is None and optional:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(value, "a list of strings" + (" or null" if optional else ""))
        return value

    return check


Flag = Annotated[bool, PlainValidator(_flag)]
Text = Annotated[str, PlainValidator(_text(optional=False, empty=True))]
Name = Annotated[str, PlainValidator(_text(optional=False, empty=False))]
OptName = Annotated[str | None, PlainValidator(_text(optional=True, empty=False))]
Texts = Annotated[list[str], PlainValidator(_texts(optional=False))]
OptTexts = Annotated[list[str] | None, PlainValidator(_texts(optional=True))]


def custom(check: Callable[[Any, Context], str | None]) -> Any:
    """A field checked by `check(value, context)`, which returns what is allowed when the value is bad."""

    def run(value: Any, info: ValidationInfo) -> Any:
        _check_unresolved(value)
        allowed = check(value, info.context or {})
        if allowed is not None:
            raise bad(value, allowed)
        return value

    return Annotated[Any, PlainValidator(run)]


def cross(message: str) -> PydanticCustomError:
    """An error about several keys from a model validator: `message` is the whole line."""
    return PydanticCustomError(KIND + "_cross", "{line}", {"line": message})


# --------------------------------------------------------------------------- the one-line message


def _fields_at(root: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """The keys the section at `loc` takes (for an unknown key's message), or None if it is not a Section."""
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        model = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
        if model is None:
            return None
    return [f.alias or name for name, f in model.model_fields.items()]


def one_line(
    err: ValidationError,
    root: type[BaseModel],
    prefix: Sequence[str] = (),
    derived: Callable[[str], bool] = lambda key: False,
) -> str:
    """The first error as the one line a user sees: `key=value: must be …`. An error at a key the config
    derives from others (`lr` from optim.base_lr) gives way to one at a key it is derived from, which is
    the key the user set."""
    errors = err.errors(include_url=False)
    e = next((x for x in errors if not derived(".".join(map(str, x["loc"])))), errors[0])
    loc = [*prefix, *(str(p) for p in e["loc"])]
    key = ".".join(loc) or "config"
    kind, ctx = e["type"], e.get("ctx") or {}
    if isinstance(e.get("input"), Unresolved):  # a section whose interpolation failed
        return f"{key}: cannot be resolved ({e['input'].reason})"
    if kind == KIND:
        return f"{key}={ctx['shown']}: {e['msg']}"
    if kind == KIND + "_cross":
        return e["msg"]
    if kind == KIND + "_unresolved":
        return f"{key}: {e['msg']}"
    if kind == "extra_forbidden":
        allowed = _fields_at(root, loc[len(prefix) : -1]) or []
        where = f"{'.'.join(loc[:-1])}" if len(loc) > 1 else "the top level"
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        if close:
            return f"{key}: unknown key; did you mean {'.'.join([*loc[:-1], close[0]])}?"
        return f"{key}: unknown key; {where} takes " + ", ".join(allowed)
    if kind == "missing":
        return f"{key}: missing; the config must set it"
    shown = e.get("input")
    return f"{key}={shown!r}: {e['msg'][0].lower() + e['msg'][1:]}"
