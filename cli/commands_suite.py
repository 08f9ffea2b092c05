"""`embedcache suite`: encoders x data sets x heads from one YAML file."""

from __future__ import annotations

import json

import click


@click.command("suite")
@click.argument("suite_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan and its cost (store bytes, hours); run nothing.")
@click.option("--no-measure", is_flag=True,
              help="With --dry-run: use only the suite's `throughput:` numbers, measure nothing here.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan and cost as JSON.")
def suite_command(suite_path: str, dry_run: bool, no_measure: bool, as_json: bool) -> None:
    """Run the matrix a SUITE file names: extract each (data set, encoder) store once, sweep every head with the
    protocol, and write Table 2's shape (table.md, table.csv, table.html). Finished cells are never redone, so the
    same command resumes, and adding an encoder, a data set or a head computes only the new cells; machines running
    the same suite with a shared `storage:` split the matrix between them.

    \b
    Examples:
      embedcache suite configs/suites/sample.yaml --dry-run
      embedcache suite configs/suites/sample.yaml
    """
    from embedcache.suite import estimate, format_plan, load_suite, plan, run_suite

    suite = load_suite(suite_path)
    cells = plan(suite)
    if dry_run:
        cost = estimate(suite, cells, measure=not no_measure)
        click.echo(json.dumps(cost, indent=2) if as_json else format_plan(suite, cells, cost))
        return
    click.echo(format_plan(suite, cells))
    run_suite(suite, log=click.echo)
    click.echo((suite.out / "table.md").read_text())
    click.echo(f"tables: {suite.out / 'table.md'}, {suite.out / 'table.csv'}, {suite.out / 'table.html'}")


COMMANDS = [suite_command]
