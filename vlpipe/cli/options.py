"""Click options generated from settings declarations (vlpipe/settings.py): one flag per setting.

The flag's name, type, help and shown default all come from the declaration, so `--help` cannot
drift from what the library does. Every option defaults to "not given" (None): a `--config` file's
value survives unless the flag is given, and `load_settings` then names the flag in any error.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal

import click
from pydantic.fields import FieldInfo

from vlpipe.errors import VlpipeError
from vlpipe.settings import CONFIG_FLAG, Settings, declared, flag_of, section_class


def default_text(info: FieldInfo) -> str:
    """How a setting's default reads in `--help`: from the declaration, never restated by hand."""
    extra = declared(info)
    if extra.get("shown_default"):
        return str(extra["shown_default"])
    value = info.get_default(call_default_factory=True)
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings_fields(cls: type[Settings]) -> Iterator[tuple[str, FieldInfo]]:
    """Every setting of `cls` and its sections, as (flat name, declaration)."""
    for name, info in cls.model_fields.items():
        section = section_class(info.annotation)
        if section is not None:
            yield from settings_fields(section)
        else:
            yield name, info


def cli_options(cls: type[Settings], *, skip: tuple[str, ...] = (), config_file: bool = True
                ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Click options for every setting of `cls` (but `skip`), generated from the declarations.

    Every option defaults to "not given" (None), so a `--config` file's value survives unless the
    flag is given; the help shows the declared default. Lists take commas (`--tasks mlm,ap`) or
    repeats; tables take `KEY=VALUE` pairs. The command receives each value under its field name,
    already converted, and passes them on to `load_settings`.
    """
    options = []
    if config_file:
        options.append(click.option(CONFIG_FLAG, "config_file", type=click.Path(path_type=str), default=None,
                                    help="A .json or .toml file with any of these settings (keys are the "
                                         "option names with underscores); flags given here override it."))
    for name, info in settings_fields(cls):
        if name not in skip:
            options.append(_option(name, info))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        func.__vlpipe_settings__ = cls  # type: ignore[attr-defined]  # tests check --help against it
        return func

    return decorate


def _option(name: str, info: FieldInfo) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    flag = flag_of(name, info)
    extra = declared(info)
    required = info.is_required()
    help_text = (info.description or "").rstrip()
    help_text += " Required (here or in --config)." if required else f" [default: {default_text(info)}]"
    annotation = _without_none(info.annotation)
    kwargs: dict[str, Any] = {"default": None, "help": help_text}
    if extra.get("metavar"):
        kwargs["metavar"] = extra["metavar"]
    if annotation is bool:
        if not extra.get("negatable", True):
            return click.option(flag, name, is_flag=True, **kwargs)
        return click.option(f"{flag}/--no-{flag[2:]}", name, **kwargs)
    if typing.get_origin(annotation) is Literal:
        return click.option(flag, name, type=click.Choice([str(a) for a in typing.get_args(annotation)]), **kwargs)
    if typing.get_origin(annotation) is tuple or typing.get_origin(annotation) is dict:
        kwargs.setdefault("metavar", "A,B,..." if typing.get_origin(annotation) is tuple else "KEY=VALUE")
        return click.option(flag, name, multiple=True, callback=_list_callback(name, annotation, flag), **kwargs)
    if annotation in (int, float, str):
        return click.option(flag, name, type=_cli_type(annotation, info), **kwargs)
    raise TypeError(f"setting {name}: no command-line form for {annotation}")


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _cli_type(annotation: Any, info: FieldInfo) -> Any:
    """click's INT and FLOAT; for an optional string, the word `none` gives None (e.g. `--init none`)."""
    if annotation is str and info.annotation is not str:
        return _NoneableString()
    return {int: click.INT, float: click.FLOAT, str: click.STRING}[annotation]


class _NoneableString(click.ParamType):
    name = "text"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return None if str(value).lower() == "none" else value


def split_pairs(value: str) -> list[str]:
    """Split at commas outside brackets: `a=1,b=[2,3]` -> `a=1`, `b=[2,3]`."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(value):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p.strip() for p in parts if p.strip()]


def _list_callback(name: str, annotation: Any, flag: str) -> Callable[[Any, Any, tuple[str, ...]], Any]:
    """Parse repeated/comma-separated values into the setting's list or table type (None if not given)."""
    args = typing.get_args(annotation)

    def convert(ctx: Any, param: Any, values: tuple[str, ...]) -> Any:
        if not values:
            return None
        items = [item for value in values for item in split_pairs(value)]
        try:
            if typing.get_origin(annotation) is tuple:
                kinds = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
                if len(kinds) != len(items):
                    raise ValueError(f"expected {len(kinds)} comma-separated values")
                return tuple(_scalar(item, kind) for item, kind in zip(items, kinds, strict=True))
            out = {}
            for item in items:
                key, sep, raw = item.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"expected KEY=VALUE, got {item!r}")
                out[key.strip()] = _scalar(raw.strip(), args[1])
            return out
        except ValueError as exc:
            raise VlpipeError(f"{flag} {','.join(values)}: {exc}") from None

    return convert


def _scalar(raw: str, kind: Any) -> Any:
    """One command-line value as `kind`; for `Any` (model options): a number, true/false, a [list] or text."""
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is str:
        return raw
    if raw.startswith("["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list: {exc.msg}") from None
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)
