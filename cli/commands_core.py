"""Core commands: encoders, extract, info, quickstart."""

from __future__ import annotations

import click

from embedcache import encoders


@click.command("encoders")
def encoders_command() -> None:
    """List the encoder families."""
    for name in encoders.available():
        click.echo(name)


COMMANDS = [encoders_command]
