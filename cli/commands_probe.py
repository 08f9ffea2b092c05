"""Probe commands: train heads on a token store (`probe`) and compare ledger results (`results`)."""

from __future__ import annotations

import click

from embedcache.errors import ConfigError


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
    from embedcache.probe import grid_values

    return grid_values(numbers, option)


@click.command("probe")
@click.argument("store", required=False)
@click.option("--head", "heads", help="Head kinds, comma-separated: linear,mlp,attentive,ep,simpool,abmilp,proto,"
              "protofloat,protobin,layermix,knn,logreg,frame_linear (default: the config's heads; built in: "
              "linear,attentive,protobin)")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory to create.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Probe config YAML (configs/probes/); the options below override it.")
@click.option("--seeds", type=int, help="Seeds per configuration; the table shows mean ± std.  [default: 1]")
@click.option("--lr", help="Learning rate(s), comma-separated: a grid trained as one bank.  [default: 3e-3,1e-2,3e-2]")
@click.option("--weight-decay", help="Weight decay(s), comma-separated: crossed with --lr.  [default: 1e-4]")
@click.option("--head-option", "head_options", multiple=True,
              help="key=value for every head that takes it (e.g. prototypes_per_class=10), or NAME.key=value "
                   "for one head; repeatable.")
@click.option("--layer", help="Stored layer(s) to probe: 6, -1 (from the end), -1,-4,6 or all; several train every "
              "head on each in one pass, with a row per head and layer.  [default: the last]")
@click.option("--epochs", type=int, help="Training epochs (overrides the config).  [default: 30]")
@click.option("--batch-size", type=int, help="Clips per batch (overrides the config).  [default: 32]")
@click.option("--task", type=click.Choice(["multilabel", "multiclass", "sed"]),
              help="sed: sound-event detection from the store's strong labels: frame heads on per-step labels, "
                   "prototype heads on clip labels scored per step; writes sed.csv and event_predictions.csv (needs "
                   "the extra `sed`).  [default: from the labels]")
@click.option("--median-filter", type=float,
              help="task sed: seconds of median filter on the frame scores at prediction time (0: none).  "
                   "[default: 0.5]")
@click.option("--data-order", type=click.Choice(["per_seed", "shared"]),
              help="per_seed: each seed its own pass and data order; shared: every seed's heads in one pass (they "
                   "differ in init only).  [default: per_seed]")
@click.option("--device", help="auto, cpu, cuda, cuda:1, ...  [default: auto]")
@click.option("--ledger", type=click.Path(dir_okay=False), help="Results ledger CSV (default: <out>/../ledger.csv).")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out if there is one (else an interrupted "
              "run with the same settings resumes).")
@click.option("--subset", help="A view of the store: 'splits=a,b;classes=x,y;clip_ids=@ids.txt' (recorded in the run).")
@click.option("--splits", "splits", help="Split(s) per role: 'train=fold1,fold2;valid=dev;test=eval' ('valid=': none).")
@click.option("--folds", is_flag=True,
              help="Cross-validate over the store's fold splits: test on fold k, choose on k+1, train on the rest.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def probe_command(
    store, heads, out_dir, config_path, seeds, lr, weight_decay, head_options, layer, epochs, batch_size, task,
    median_filter, data_order, device, ledger, overwrite, subset, splits, folds, no_progress,
) -> None:
    """Train probe heads on STORE, choose each on validation, test it once, and print a comparison table.

    \b
    Examples:
      embedcache probe runs/sample.zarr --head linear,protobin --out runs/probes/sample --seeds 5
      embedcache probe runs/sample.zarr --config configs/probes/paper.yaml --out runs/probes/paper \\
          --head-option protobin.prototypes_per_class=10
    \b
    5-fold cross-validation of an ESC-50 store (RUN/fold1..fold5, RUN/folds.json, RUN/folds.csv):
      embedcache probe runs/esc50.zarr --folds --head linear,protobin --out runs/probes/esc50-cv
    \b
    Every stored layer in one pass, plus SUPERB's learned weighted sum of the layers (layers.csv: score per layer):
      embedcache probe runs/vit.zarr --layer all --head linear,layermix --out runs/probes/vit-layers
    \b
    Sound-event detection from strong labels (frame_linear on per-step labels, protobin on clip labels only):
      embedcache probe runs/sample.zarr --task sed --head frame_linear,protobin --out runs/probes/sample-sed
    \b
    A run killed part way (even kill -9) resumes with the same command: finished banks are not trained again.
    """
    from embedcache.probe import apply_overrides, load_config, parse_layers, read_store_record, run_folds, run_probe
    from embedcache.results import format_comparison_table, format_folds_table

    config = apply_overrides(
        load_config(config_path) if config_path else {}, lr=_numbers(lr, "--lr"),
        weight_decay=_numbers(weight_decay, "--weight-decay"), epochs=epochs, batch_size=batch_size, device=device,
        layer=parse_layers(layer) if layer is not None else None, subset=subset, splits=splits,
        head_options=_head_options(head_options), data_order=data_order, task=task, median_filter=median_filter,
    )
    head_kinds = [part.strip() for part in heads.split(",") if part.strip()] if heads else None
    if folds:
        folds_report = run_folds(store, head_kinds, out_dir, config=config, seeds=seeds, ledger=ledger,
                                 overwrite=overwrite, log=click.echo, progress=not no_progress)
        click.echo(format_folds_table(folds_report))
        click.echo(f"run: {folds_report.run_dir} (folds.json, folds.csv, one run per fold)  "
                   f"ledger: {folds_report.ledger}")
        return
    report = run_probe(store, head_kinds, out_dir, config=config, seeds=seeds, ledger=ledger, overwrite=overwrite,
                       log=click.echo, progress=not no_progress,
                       expect_store=read_store_record(config_path) if config_path else None)
    paths = ", ".join(f"{split}: {path}" for split, path in report.data_paths.items())
    click.echo(f"data: {paths}")
    click.echo(format_comparison_table(report))
    click.echo(f"run: {report.run_dir}  ledger: {report.ledger}")


def _head_options(items: tuple[str, ...]) -> dict | None:
    """('prototypes_per_class=10', 'protobin.dropout=0.2') -> {'prototypes_per_class': 10, 'protobin': {...}}."""
    import yaml

    options: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--head-option {item!r}: use key=value or HEAD.key=value, e.g. prototypes_per_class=10")
        name, dot, option = key.strip().rpartition(".")
        parsed = yaml.safe_load(value)
        if dot:
            options.setdefault(name, {})[option] = parsed
        else:
            options[option] = parsed
    return options or None


@click.command("results")
@click.argument("ledger", type=click.Path(dir_okay=False))
@click.option("--head", "heads", help="Only these head names, comma-separated.")
def results_command(ledger, heads) -> None:
    """Print a comparison table (mean ± std over seeds) of the runs recorded in LEDGER.

    \b
    Example:
      embedcache results runs/probes/ledger.csv --head protobin,linear
    """
    from embedcache.results import format_comparison_table, read_ledger

    rows = read_ledger(ledger, log=lambda line: click.secho(f"warning: {line}", fg="yellow", err=True))
    if heads:
        wanted = {part.strip() for part in heads.split(",")}
        rows = [row for row in rows if row["head"] in wanted]
    click.echo(format_comparison_table(rows))


@click.command("predict")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("data")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="CSV to write: one row per (head, seed, clip) with each class's score.")
@click.option("--split", help="Only these splits of a store, comma-separated (default: every clip).")
@click.option("--head", "heads", help="Only these heads of the run, comma-separated (default: all).")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="For audio: the encoder checkpoint, if it is no longer where the store's provenance says.")
@click.option("--store-out", type=click.Path(file_okay=False),
              help="For audio: where its token store goes (default: OUT with .zarr).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, ...")
def predict_command(run, data, out_path, split, heads, checkpoint, store_out, device) -> None:
    """Apply RUN's chosen heads (every seed) to DATA: a token store, or a manifest of new audio, which is extracted
    first with the encoder and settings of the store RUN was trained on. For a `--task sed` run, the events its
    frame heads detect (the run's median filter and threshold) also go to OUT's name with .events.csv.

    \b
    Examples:
      embedcache predict runs/probes/sample runs/other.zarr --split test --out runs/other-scores.csv
      embedcache predict runs/probes/sample new_clips/manifest.csv --out runs/new-scores.csv
    """
    from pathlib import Path

    from embedcache.predict import extract_like, load_run, predict
    from embedcache.results import EVENT_PREDICTION_COLUMNS, write_csv, write_predictions

    trained = load_run(run, [h.strip() for h in heads.split(",")] if heads else None)
    if Path(data).suffix.lower() in (".csv", ".jsonl", ".ndjson") and Path(data).is_file():
        target = store_out or str(Path(out_path).with_suffix(".zarr"))
        click.echo(f"extracting {data} with the encoder of {trained.store} into {target}")
        store = extract_like(trained.store, data, target, checkpoint=checkpoint, layer=trained.layers)
    else:
        store = data
    splits = [s.strip() for s in split.split(",")] if split else None
    predictions = predict(trained, store, splits, device=device)
    write_predictions(out_path, predictions)
    click.echo(f"{out_path}: {len(predictions.clip_ids)} clips x {len(predictions.scores)} head/seed(s)")
    if predictions.events is not None:
        events_path = Path(out_path).with_name(Path(out_path).stem + ".events.csv")
        write_csv(events_path, predictions.events, EVENT_PREDICTION_COLUMNS)
        click.echo(f"{events_path}: {len(predictions.events)} detected event(s) (onset, offset in s, label, score)")


COMMANDS = [probe_command, results_command, predict_command]
