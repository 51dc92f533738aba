"""Every command's options come from its settings' declarations (vlpipe/cli/options.py): each setting
is a flag, each flag's shown default is the declared one, and there is no option nobody declared."""

from __future__ import annotations

import re

import click
import pytest

from vlpipe.cli.main import COMMANDS, LazyGroup, cli
from vlpipe.cli.options import default_text, settings_fields, split_pairs
from vlpipe.settings import CONFIG_FLAG, flag_of


def _leaf_commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli)
    found = []

    def walk(name: str, command: click.Command) -> None:
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                walk(f"{name} {sub}", command.get_command(ctx, sub))
        else:
            found.append((name, command))

    for name in COMMANDS:
        walk(name, LazyGroup.get_command(cli, ctx, name))
    return found


COMMANDS_WITH_OPTIONS = [(name, command) for name, command in _leaf_commands()
                         if any(isinstance(p, click.Option) and p.name != "help" for p in command.params)]


@pytest.mark.parametrize(("name", "command"), COMMANDS_WITH_OPTIONS, ids=[n for n, _ in COMMANDS_WITH_OPTIONS])
def test_every_option_shows_its_declared_default(name, command):
    declared = getattr(command.callback, "__vlpipe_settings__", None)
    assert declared is not None, f"vlpipe {name}: its options are not generated from a settings declaration"
    options = {p.name: p for p in command.params if isinstance(p, click.Option) and p.name != "help"}
    fields = dict(settings_fields(declared))
    assert set(options) == {*fields, "config_file"}, f"vlpipe {name}: options and settings differ"
    assert CONFIG_FLAG in options["config_file"].opts  # every setting can come from a file too
    for field, info in fields.items():
        option = options[field]
        assert flag_of(field, info) in option.opts
        help_text = " ".join(option.help.split())
        if info.is_required():
            assert help_text.endswith("Required (here or in --config)."), (name, field)
        else:
            shown = re.search(r"\[default: (.*)\]$", help_text)
            assert shown and shown.group(1) == " ".join(default_text(info).split()), (name, field, help_text)


def test_lists_split_at_commas_outside_brackets():
    assert split_pairs("a=1, b=[2,3],c") == ["a=1", "b=[2,3]", "c"]
