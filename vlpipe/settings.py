"""One way to declare a setting: a pydantic field with its type, default, allowed range and help.

Every command's settings are a `Settings` subclass, and everything else is derived from those
declarations: validation (pydantic, strict: a config file's `"batch_size": "8"` is refused, not
coerced), the config-file reader (`.json` or `.toml`, flat keys named like the flags), the click
options with their help text and shown defaults (vlpipe/cli/options.py), the one-line errors that name the
flag or the file and key the bad value came from (`load_settings`), and the saved `config.json`
(`model_dump(mode="json")`). A default or a range is therefore written once, in the class.

Sections: a field whose type is itself a `Settings` class (fetch's `verify`, `policy`, ...) is a
group of settings; its fields become flags and file keys of their own, by their own names.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from vlpipe.errors import VlpipeError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib  # type: ignore[no-redef]

CONFIG_FLAG = "--config"
_validating = threading.local()


@contextlib.contextmanager
def validating() -> Iterator[None]:
    """Mark a validation in progress on this thread (see `Settings.__init__`)."""
    before = getattr(_validating, "active", False)
    _validating.active = True
    try:
        yield
    finally:
        _validating.active = before


def setting(default: Any = ..., help: str = "", *, factory: Callable[[], Any] | None = None,
            flag: str | None = None, metavar: str | None = None, shown_default: str | None = None,
            fixed: bool = False, negatable: bool = True, **constraints: Any) -> Any:
    """Declare one setting: its default, its help (one sentence or two: what it does and why) and its
    allowed range as pydantic constraints (`ge=1`, `gt=0`, `allow_inf_nan=False`, ...).

    `flag` overrides the flag name (default `--field-name`); `shown_default` replaces the default in
    the help where the value itself says little (`None` meaning "the cache's own"); `fixed` marks a
    setting that decides what a run trains, so a resumed run must keep it; `negatable=False` makes a
    true/false setting a plain switch (`--resume`) instead of a `--x/--no-x` pair.
    """
    extra = {"flag": flag, "metavar": metavar, "shown_default": shown_default, "fixed": fixed,
             "negatable": negatable}
    if factory is not None:
        return Field(default_factory=factory, description=help, json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def declared(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


class Settings(BaseModel):
    """Base of every settings class: unknown keys refused, strict types, validated on assignment."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, frozen=False)

    # Pairs of settings of which a command line value replaces the other one's file value
    # (`--epochs` on the command line drops `steps` from the file instead of conflicting with it).
    replaces: typing.ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, **values: Any) -> None:
        """Built in Python, a wrong value gets the same one-line error as from a file (source `config`).

        pydantic also calls this for every section while validating the outer settings; only the
        outermost call explains, so the error still names the setting by its full location.
        """
        outer = not getattr(_validating, "active", False)
        try:
            with validating():
                super().__init__(**values)
        except ValidationError as exc:
            if not outer:
                raise
            raise VlpipeError(explain(exc, type(self), "config")) from None

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, values: Any) -> Any:
        """JSON and TOML have no tuples: a list given for a tuple setting is taken as one; a path
        given in Python (`Path`) for a text setting is taken as its text."""
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for name, info in cls.model_fields.items():
            if isinstance(out.get(name), list) and _is_tuple(info.annotation):
                out[name] = tuple(out[name])
            elif isinstance(out.get(name), os.PathLike):
                out[name] = os.fspath(out[name])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples become lists): what `config.json` holds."""
        return self.model_dump(mode="json")

    @classmethod
    def fixed_settings(cls) -> tuple[str, ...]:
        """Names of the settings declared `fixed=True` (a resume must keep them)."""
        return tuple(name for name, info in cls.model_fields.items() if declared(info).get("fixed"))


# ---- reading: files and flags --------------------------------------------------------------------


def read_config_file(path: str | os.PathLike[str], table: str | None = None) -> dict[str, Any]:
    """Plain values from a `.json` or `.toml` file (a TOML `[table]` of that name is accepted too)."""
    path = Path(path)
    if not path.is_file():
        raise VlpipeError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
            if table is not None and isinstance(data.get(table), dict):
                data = data[table]
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise VlpipeError(f"config file {path}: use a .json or .toml file")
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise VlpipeError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise VlpipeError(f"config file {path} must contain a table/object of settings")
    return data


def load_settings(cls: type[Settings], file: str | os.PathLike[str] | None = None,
                  flags: Mapping[str, Any] | None = None, *, table: str | None = None) -> Any:
    """`cls` from a config file's values, then every flag that was given (not None) on top.

    A bad value is one line naming where it came from: `--batch-size 0: must be >= 1` for a flag,
    `run.toml: batch_size must be >= 1, got 0` for a file key.
    """
    from_file = _nest(cls, read_config_file(file, table), str(file)) if file is not None else {}
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    for name, other in cls.replaces:
        if name in given:
            from_file.pop(other, None)
    values = _merge(cls, from_file, _nest(cls, given, "flags"))
    try:
        with validating():
            return cls.model_validate(values)
    except ValidationError as exc:
        raise VlpipeError(explain(exc, cls, str(file) if file is not None else "config", flags=given)) from None


def _merge(cls: type[Settings], base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; sections merge key by key, any other value (a table too) is replaced whole."""
    out = dict(base)
    for key, value in top.items():
        section = section_class(cls.model_fields[key].annotation) if key in cls.model_fields else None
        if section is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(section, out[key], value)
        else:
            out[key] = value
    return out


def _nest(cls: type[Settings], flat: dict[str, Any], source: str) -> dict[str, Any]:
    """Flat keys (as flags and files use them) placed into their sections; unknown keys refused."""
    paths = leaf_paths(cls)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in cls.model_fields and not section_class(cls.model_fields[key].annotation):
            out[key] = value
        elif key in cls.model_fields and isinstance(value, dict):  # a whole section as a table
            out.setdefault(key, {}).update(value)
        elif key in paths:
            section = out
            for part in paths[key][:-1]:
                section = section.setdefault(part, {})
            section[paths[key][-1]] = value
        else:
            known = ", ".join(sorted(paths))
            raise VlpipeError(f"{source}: unknown setting {key!r}; known: {known}")
    return out


def leaf_paths(cls: type[Settings], prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Every setting's flat name -> its path through the sections (`min_side` -> (verify, min_side))."""
    out: dict[str, tuple[str, ...]] = {}
    for name, info in cls.model_fields.items():
        section = section_class(info.annotation)
        if section is not None:
            out.update(leaf_paths(section, (*prefix, name)))
        else:
            out[name] = (*prefix, name)
    return out


def section_class(annotation: Any) -> type[Settings] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Settings) else None


def _field_at(cls: type[Settings], loc: tuple[Any, ...]) -> tuple[str, FieldInfo | None, bool]:
    """The flat name and declaration of the setting at a pydantic error location, and whether the
    location goes on inside the value (an item of a list: the value as a whole is then wrong)."""
    info: FieldInfo | None = None
    name, depth = "", 0
    current: type[Settings] | None = cls
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            break
        info, name, depth = current.model_fields[part], part, depth + 1
        current = section_class(info.annotation)
    return name, info, info is not None and depth < len(loc)


# ---- errors --------------------------------------------------------------------------------------


def explain(exc: ValidationError, cls: type[Settings], source: str, flags: Mapping[str, Any] | None = None,
            dotted: bool = False, prefix: str = "") -> str:
    """The first validation problem as one line, naming the flag or the file and key.

    `dotted` names a setting by its path through the sections (`text.heads`, as model options are
    written) instead of by its flat name (`min_side`, as fetch's flags are); `prefix` goes before
    the name (the section of a setting checked on its own).
    """
    error = exc.errors()[0]
    name, info, inside = _field_at(cls, tuple(error["loc"]))
    if info is not None and section_class(info.annotation) and not inside and error["type"] == "value_error":
        name, info = "", None  # a check across a section's settings: its message names them
    if dotted and name:
        name = ".".join(str(part) for part in error["loc"] if isinstance(part, str))
    if name:
        name = prefix + name
    value = error.get("input")
    problem = _problem(error, info)
    if inside and info is not None and error["type"] not in ("value_error", "assertion_error"):
        problem = f"must be {describe(info.annotation)}"
    if flags is not None and name in flags and info is not None:
        return f"{flag_of(name, info)} {_cli_text(flags[name])}: {problem}"
    if inside:
        return f"{source}: {name} {problem}"
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(leaf_paths(cls)))
        return f"{source}: unknown setting {name or error['loc'][-1]!r}; known: {known}"
    if error["type"] == "missing":
        return f"{source}: {name!r} is required ({_help_of(info)})" if info else f"{source}: {problem}"
    if not name:  # a check across settings (a model validator): its message names them
        return f"{source}: {problem}" if flags is None or source != "config" else problem
    if error["type"] in ("value_error", "assertion_error"):  # a check of our own: its message says it all
        return f"{source}: {name}: {problem}"
    return f"{source}: {name} {problem}, got {_shown(value)}"


def _problem(error: Mapping[str, Any], info: FieldInfo | None) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {bound:g}" if isinstance(bound, float) else f"must be {bounds[kind]} {bound}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '').replace(chr(39), '')}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind.endswith("_type") or kind.endswith("_parsing") or kind in ("too_short", "too_long"):
        return f"must be {describe(info.annotation) if info is not None else 'another type'}"
    return error["msg"][0].lower() + error["msg"][1:]


def _help_of(info: FieldInfo) -> str:
    return (info.description or "").split(".")[0].lower()


def _cli_text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _shown(value: Any, limit: int = 60) -> str:
    """A bad value as the user wrote it (a tuple as the list it was in the file), cut to `limit`."""
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(annotation: Any, plural: bool = False) -> str:
    """`int` -> "an integer", `tuple[str, ...]` -> "a list of strings": the words of an error message."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    names = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
             str: ("a string", "strings"), type(None): ("null", "nulls")}
    if annotation in names:
        return names[annotation][plural]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg, plural) for arg in args)
    if origin is Literal:
        return ("names from " if plural else "one of ") + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0], True)}"
        return f"a list of {len(args)} {describe(args[0], True)}"
    if origin is dict:
        if args[1] is Any:
            return "a table/object of settings"
        return f"a table/object mapping names to {describe(args[1], True)}"
    return "a table/object of settings" if section_class(annotation) else str(annotation)


def _is_tuple(annotation: Any) -> bool:
    if typing.get_origin(annotation) is tuple:
        return True
    return any(_is_tuple(a) for a in typing.get_args(annotation)
               if typing.get_origin(annotation) in (typing.Union, types.UnionType))


def flag_of(name: str, info: FieldInfo) -> str:
    return declared(info).get("flag") or "--" + name.replace("_", "-")
