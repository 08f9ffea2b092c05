"""Sweep command: search one head's lr and weight decay in an Optuna study (`sweep`)."""

from __future__ import annotations

import click

from embedcache.errors import ConfigError


def _range(text: str | None, option: str) -> list[float] | None:
    """'1e-4,8e-2' -> [0.0001, 0.08]; None stays None."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if len(values) != 2:
        raise ConfigError(f"{option} {text!r}: give LOW,HIGH, e.g. {option} 1e-4,8e-2")
    return values


@click.command("sweep", context_settings={"show_default": True})
@click.argument("store", required=False)
@click.option("--head", help="Head(s) to tune, comma-separated, one study each: a head name from the config, or a kind "
              "(protobin, linear, ...).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Probe config YAML (configs/probes/)")
@click.option("--trials", type=int, default=50, help="Trials in each study (all workers together).")
@click.option("--startup-trials", type=int, default=25, help="Sobol trials before TPE.")
@click.option("--batch-trials", type=int, default=8, help="Trials trained together in one pass over the tokens (K).")
@click.option("--storage", help="Study database: sqlite:///path.db (default: <out>/study.db) or postgresql://...")
@click.option("--study", "study_name", help="Study name (default <store>-<head>; several heads: <study>-<head>); "
              "workers with the same storage and name share trials.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder (default runs/sweeps/<study>); several heads: <out>/<head> each, and "
              "<out>/summary.csv (default runs/sweeps/<store>).")
@click.option("--lr", help="Log-uniform lr range LOW,HIGH (default: the config grid's min and max).")
@click.option("--weight-decay", help="Log-uniform weight decay range LOW,HIGH (default: from the config grid).")
@click.option("--min-epochs", type=int,
              help="Successive halving: the first rung (an epoch). Default, with F the reduction factor: "
              "ceil(epochs / F^r) for the most rungs r with F^(r+1) <= trials, so each rung keeps about 1/F of the "
              "trials reaching it and about F or more finish; under F^2 trials (9) nothing is pruned before the "
              "last epoch; 50 trials of 30 epochs: rungs at 4 and 12.")
@click.option("--reduction-factor", type=int, default=3, help="Successive halving: keep 1/this at each rung.")
@click.option("--top-k", type=int, default=3, help="Best trials re-run with --final-seeds seeds.")
@click.option("--final-seeds", type=int, default=5, help="Seeds of the final re-run.")
@click.option("--final/--no-final", default=True,
              help="Re-run the top trials once the study is full (workers may pass --no-final).")
@click.option("--final-now", is_flag=True,
              help="Re-run the top trials even while some still run (a killed worker leaves its trials running).")
@click.option("--epochs", type=int, help="Training epochs (overrides the config).")
@click.option("--batch-size", type=int, help="Clips per batch (overrides the config).")
@click.option("--device", help="auto, cpu, cuda, cuda:1, ...")
@click.option("--splits", "splits", help="Split(s) per role: 'train=fold1,fold2;valid=dev;test=eval'.")
def sweep_command(
    store, head, config_path, trials, startup_trials, batch_trials, storage, study_name, out_dir, lr, weight_decay,
    min_epochs, reduction_factor, top_k, final_seeds, final, final_now, epochs, batch_size, device, splits,
) -> None:
    """Search lr and weight decay for each --head on STORE (Sobol, then TPE, pruned), then re-run the best with seeds.

    A range that collapses to one value (a one-value grid, or --weight-decay 1e-4,1e-4) leaves only the other one
    searched, with a warning. A study or best.yaml made on a store with another fingerprint (after embedcache append)
    is refused.

    \b
    Example, two heads, one study each (runs/sweeps/sample/linear/, .../protobin/, runs/sweeps/sample/summary.csv):
      embedcache sweep runs/sample.zarr --head linear,protobin --config configs/probes/paper.yaml \\
        --out runs/sweeps/sample
    """
    from embedcache.probe import apply_overrides, load_config, read_store_record
    from embedcache.sweep import format_results, format_summary, run_sweeps

    # --lr and --weight-decay are the search's ranges here, not a grid: they go to the sweep settings below.
    config = apply_overrides(load_config(config_path) if config_path else {}, epochs=epochs, batch_size=batch_size,
                             device=device, splits=splits)
    expect_store = read_store_record(config_path) if config_path else None
    if expect_store is not None:
        expect_store["source"] = config_path
    sweep = {
        "trials": trials, "startup_trials": startup_trials, "batch_trials": batch_trials, "min_epochs": min_epochs,
        "reduction_factor": reduction_factor, "top_k": top_k, "final_seeds": final_seeds,
        "lr": _range(lr, "--lr"), "weight_decay": _range(weight_decay, "--weight-decay"),
    }
    heads = [part.strip() for part in head.split(",") if part.strip()] if head else None
    reports = run_sweeps(store, heads, out_dir, config=config, sweep=sweep, storage=storage, study_name=study_name,
                         final=final, final_now=final_now, expect_store=expect_store, log=click.echo)
    for report in reports:
        if report.final is not None:
            click.echo(format_results(report))
    if len(reports) > 1:
        click.echo(format_summary(reports))
        click.echo(f"summary: {reports[0].out_dir.parent / 'summary.csv'}")
    for report in reports:
        click.echo(f"sweep: {report.out_dir} (trials.csv, results.csv, best.yaml)  study: {report.study_name} "
                   f"in {report.storage}; this worker ran {len(report.ran_here)} trial(s) in {report.seconds:.1f} s")


COMMANDS = [sweep_command]
