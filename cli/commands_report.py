"""Report command: PNG figures and one self-contained HTML page from a probe run, a sweep or a ledger."""

from __future__ import annotations

import click


def _names(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


@click.command("report")
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs and HTML")
@click.option("--clips", help="Clip ids for the prototype maps, comma-separated (default: clips covering the classes)")
@click.option("--n-clips", type=int, default=6, show_default=True,
              help="At most this many clips when --clips is not given: for each class in turn, a test clip with it")
@click.option("--top-classes", type=int, default=3, show_default=True,
              help="Most probable classes drawn per clip (its true classes are always drawn too)")
@click.option("--heads", help="Heads whose per-class AP is drawn, comma-separated (default: every head)")
@click.option("--prototype-head", help="The head whose prototypes are drawn (default: the first prototype head)")
def report_command(source, out_dir, clips, n_clips, top_classes, heads, prototype_head) -> None:
    """Write report.html (images inlined) and PNGs for SOURCE: a probe run dir, a sweep dir or a ledger CSV.

    \b
    Example, the quickstart's run (prototype maps, per-class AP, head tables, curves):
      embedcache report runs/quickstart/probes-melpatch --out runs/quickstart/report
    """
    from embedcache.report import build_report  # matplotlib and torch load here, not on `embedcache --help`

    result = build_report(source, out_dir, clips=_names(clips), n_clips=n_clips, top_classes=top_classes,
                          heads=_names(heads), prototype_head=prototype_head)
    for note in result.notes:
        click.echo(f"note: {note}")
    for path in result.images:
        click.echo(f"wrote {path}")
    if result.table is not None:
        click.echo(f"wrote {result.table}")
    click.echo(f"report: {result.html}")


COMMANDS = [report_command]
