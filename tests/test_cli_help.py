"""Every command's --help has an example, and the examples name real options."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from embedcache_cli.main import main


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", commands(main), ids=" ".join)
def test_help_has_an_example_using_real_options(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output, f"embedcache {' '.join(path)} --help has no example"
    example = result.output.split("Example", 1)[1].split("Options:", 1)[0]
    command = main
    for name in path:
        command = command.commands[name]
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    used = {word.rstrip(",") for word in example.split() if word.startswith("--")}
    assert used <= known, f"embedcache {' '.join(path)}: the example uses unknown options {sorted(used - known)}"
