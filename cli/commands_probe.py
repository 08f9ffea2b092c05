"""Probe commands: train heads on a token store (`probe`) and compare ledger results (`results`)."""

from __future__ import annotations

import click

from embedcache.errors import ConfigError
from embedcache.probe import (
    format_comparison_table,
    format_folds_table,
    grid_values,
    load_config,
    parse_splits,
    read_ledger,
    run_folds,
    run_probe,
)


def _numbers(text: str | None, option: str) -> list[float] | None:
    """'1e-3,3e-3' -> [0.001, 0.003], each checked as a learning rate or weight decay; None stays None."""
    if text is None:
        return None
    try:
        numbers = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"{option} {text!r}: give numbers separated by commas, e.g. {option} 1e-3,3e-3"
        ) from None
    return grid_values(numbers, option)


@click.command("probe")
@click.argument("store", required=False)
@click.option("--head", "heads", help="Head kinds, comma-separated: linear,mlp,attentive,proto,protofloat,protobin")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory to create")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Probe config YAML (configs/probes/)")
@click.option("--seeds", type=int, help="Seeds per configuration; the table shows mean ± std.")
@click.option("--lr", help="Learning rate(s), comma-separated: a grid trained as one bank.")
@click.option("--weight-decay", help="Weight decay(s), comma-separated: crossed with --lr.")
@click.option("--layer", type=int, help="Stored layer to probe (default: the last; negative: from the end).")
@click.option("--epochs", type=int, help="Training epochs (overrides the config).")
@click.option("--batch-size", type=int, help="Clips per batch (overrides the config).")
@click.option("--device", help="auto, cpu, cuda, cuda:1, ...")
@click.option("--ledger", type=click.Path(dir_okay=False), help="Results ledger CSV (default: <out>/../ledger.csv)")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out if there is one.")
@click.option("--subset", help="A view of the store: 'splits=a,b;classes=x,y;clip_ids=@ids.txt' (recorded in the run).")
@click.option("--splits", "splits", help="Split(s) per role: 'train=fold1,fold2;valid=dev;test=eval' ('valid=': none).")
@click.option("--folds", is_flag=True,
              help="Cross-validate over the store's fold splits: test on fold k, choose on k+1, train on the rest.")
def probe_command(
    store, heads, out_dir, config_path, seeds, lr, weight_decay, layer, epochs, batch_size, device, ledger, overwrite,
    subset, splits, folds,
) -> None:
    """Train probe heads on STORE, choose each on validation, test it once, and print a comparison table.

    \b
    Example, 5-fold cross-validation of an ESC-50 store (RUN/fold1..fold5, RUN/folds.json, RUN/folds.csv):
      embedcache probe runs/esc50.zarr --folds --head linear,protobin --out runs/probes/esc50-cv
    """
    config = load_config(config_path) if config_path else {}
    values = {"lr": _numbers(lr, "--lr"), "weight_decay": _numbers(weight_decay, "--weight-decay")}
    grid = {key: value for key, value in values.items() if value}
    if grid:
        config["grid"] = {**config.get("grid", {}), **grid}
        # Command-line values win over per-head values from the config file too.
        for entry in config.get("heads", []):
            if isinstance(entry, dict):
                entry.update(grid)
    train = {key: value for key, value in (("epochs", epochs), ("batch_size", batch_size), ("device", device))
             if value is not None}
    if train:
        config["train"] = {**config.get("train", {}), **train}
    if layer is not None:
        config["layer"] = layer
    if subset:
        config["subset"] = subset
    if splits:
        config["splits"] = {**config.get("splits", {}), **parse_splits(splits)}
    head_kinds = [part.strip() for part in heads.split(",") if part.strip()] if heads else None
    if folds:
        folds_report = run_folds(store, head_kinds, out_dir, config=config, seeds=seeds, ledger=ledger,
                                 overwrite=overwrite, log=click.echo)
        click.echo(format_folds_table(folds_report))
        click.echo(f"run: {folds_report.run_dir} (folds.json, folds.csv, one run per fold)  "
                   f"ledger: {folds_report.ledger}")
        return
    report = run_probe(
        store, head_kinds, out_dir, config=config, seeds=seeds, ledger=ledger, overwrite=overwrite, log=click.echo
    )
    paths = ", ".join(f"{split}: {path}" for split, path in report.data_paths.items())
    click.echo(f"data: {paths}")
    click.echo(format_comparison_table(report))
    click.echo(f"run: {report.run_dir}  ledger: {report.ledger}")


@click.command("results")
@click.argument("ledger", type=click.Path(dir_okay=False))
@click.option("--head", "heads", help="Only these head names, comma-separated.")
def results_command(ledger, heads) -> None:
    """Print a comparison table (mean ± std over seeds) of the runs recorded in LEDGER."""
    rows = read_ledger(ledger, log=lambda line: click.secho(f"warning: {line}", fg="yellow", err=True))
    if heads:
        wanted = {part.strip() for part in heads.split(",")}
        rows = [row for row in rows if row["head"] in wanted]
    click.echo(format_comparison_table(rows))


COMMANDS = [probe_command, results_command]
