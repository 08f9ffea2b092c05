"""The `embedcache` command: a thin shell over the Python API."""

from __future__ import annotations

import sys
import warnings

import click

from embedcache.errors import EmbedcacheError, EmbedcacheWarning

_PYTHON_SHOW_WARNING = warnings.showwarning


class FriendlyGroup(click.Group):
    """Turns embedcache errors into one red line and exit code 1, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EmbedcacheError as error:
            click.secho(f"error: {error}", fg="red", err=True)
            for clip_id, reason in getattr(error, "problems", [])[:200]:
                click.echo(f"  {clip_id}: {reason}", err=True)
            ctx.exit(1)


@click.group(cls=FriendlyGroup)
@click.version_option(package_name="embedcache")
def main() -> None:
    """Extract frozen audio-encoder patch tokens once into a Zarr store, then train many probes on them."""
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """embedcache's own warnings as one yellow `warning:` line on stderr; others as Python prints them."""
    if issubclass(category, EmbedcacheWarning):
        click.secho(f"warning: {message}", fg="yellow", err=True)
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


def _register_commands() -> None:
    # Each command lives in its own module; the list is the whole CLI.
    from embedcache_cli import (
        commands_core,
        commands_data,
        commands_probe,
        commands_report,
        commands_share,
        commands_suite,
        commands_sweep,
    )

    for command in commands_core.COMMANDS + commands_data.COMMANDS + commands_probe.COMMANDS + commands_sweep.COMMANDS \
            + commands_share.COMMANDS + commands_report.COMMANDS + commands_suite.COMMANDS:
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    sys.exit(main())
