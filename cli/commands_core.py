"""Core commands: encoders, extract, info, quickstart."""

from __future__ import annotations

import json

import click
import yaml

from embedcache.errors import ConfigError


def _parse_options(items: tuple[str, ...]) -> dict:
    """`key=value` pairs; values are parsed as YAML scalars (numbers, booleans, null)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--encoder-option {item!r}: use key=value, e.g. --encoder-option n_mels=128")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        return int(index), int(count)
    except ValueError:
        raise ConfigError(f"--shard {text!r}: use i/n, e.g. --shard 0/4") from None


@click.command("encoders")
@click.option("--seconds", default=10.0, show_default=True, help="Clip length the token grid is given for.")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON (with each full front-end config).")
def encoders_command(seconds: float, as_json: bool) -> None:
    """List the encoder families: input config, token grid, prefix tokens and sizes at the released model size.

    \b
    Examples:
      embedcache encoders
      embedcache encoders --seconds 5 --json
    """
    from embedcache.encoders.catalog import catalog, format_catalog

    rows = catalog(seconds)
    click.echo(json.dumps(rows, indent=2) if as_json else format_catalog(rows))


@click.command("extract")
@click.option("--encoder", required=True, help="Registry name (see `embedcache encoders`) or package.module:factory.")
@click.option(
    "--manifest", required=True, type=click.Path(dir_okay=False), help="CSV/JSONL: clip_id,path,labels,split."
)
@click.option("--out", required=True, help="Store path (a directory ending in .zarr).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), help="Official checkpoint file.")
@click.option("--random-init", is_flag=True, help="Seeded random weights (tests and smoke runs only; recorded).")
@click.option("--encoder-option", "encoder_options", multiple=True, help="key=value passed to the encoder factory.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Label vocabulary file, one per line.")
@click.option("--events", type=click.Path(exists=True, dir_okay=False),
              help="Strong labels kept in the store: TSV of filename, onset, offset, event_label (seconds; DESED's "
                   "format). Default: events.tsv beside the manifest, when there is one.")
@click.option("--layers", default="last", show_default=True, help="'last', 'all', or indices like '-1,-4'.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32", "int8"]), default="float16",
              show_default=True, help="Token dtype; int8: symmetric codes with one float16 scale per token.")
@click.option("--compression", type=click.Choice(["zstd", "none"]), default="zstd", show_default=True)
@click.option("--batch-size", default=16, show_default=True, help="Clips per forward pass (aligned to chunks).")
@click.option("--chunk-clips", type=int, help="Clips per stored chunk (default: about 4 MB per chunk).")
@click.option("--max-seconds", type=float,
              help="Crop clips longer than this (default: a fixed-length encoder's input, else 30 s); cropped clips "
                   "are counted and listed.")
@click.option("--clip-seconds", type=float, hidden=True, help="Old name of --max-seconds.")
@click.option("--window", type=float, help="Cut every recording into rows of this many seconds (nothing is cropped).")
@click.option("--hop", type=float, help="Seconds between window starts (default: --window, no overlap).")
@click.option("--augment", type=click.Choice(["mixup"]),
              help="Pre-generate augmented copies of the train split's rows (BirdSet few-shot protocol).")
@click.option("--copies", type=int, default=5, show_default=True, help="Augmented copies of each train row.")
@click.option("--p", "augment_p", type=float, default=0.9, show_default=True,
              help="Probability that a copy is mixed (else it repeats its row).")
@click.option("--augment-seed", type=int, default=0, show_default=True, help="Seed of the mixing recipes.")
@click.option("--workers", type=int, help="Decoding worker processes (default: min(4, cores - 1)).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--autocast", type=click.Choice(["none", "bf16", "fp16"]), default="none", show_default=True)
@click.option("--skip-bad", is_flag=True, help="Record bad rows in the store and extract the rest.")
@click.option("--follow-symlinks", is_flag=True,
              help="Let symlinks in the manifest's folder lead outside it (a data folder linked in that you trust).")
@click.option("--shard", default="0/1", show_default=True, help="i/n: this process fills the i-th of n slices.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store made with other settings.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_command(**kw) -> None:
    """Run a frozen encoder once over a manifest and cache every patch token in a Zarr store.

    \b
    Examples:
      embedcache extract --encoder melpatch --manifest data/sample/manifest.csv --out runs/sample.zarr
      embedcache extract --encoder beats --checkpoint BEATs_iter3_plus_AS2M.pt --manifest M.csv --out S.zarr \\
          --layers all
      embedcache extract --encoder dasheng --checkpoint dasheng_base.pt --manifest M.csv --out S.zarr --window 5
    """
    from embedcache.extract import ExtractConfig, extract
    from embedcache.rows import Mixup

    mixup = None
    if kw["augment"] == "mixup":
        try:
            mixup = Mixup(copies=kw["copies"], p=kw["augment_p"], seed=kw["augment_seed"])
        except ValueError as error:
            raise ConfigError(f"--augment mixup: {error}") from None
    if kw["clip_seconds"] is not None and kw["max_seconds"] is not None:
        raise ConfigError("--clip-seconds is the old name of --max-seconds: give only --max-seconds")
    config = ExtractConfig(
        encoder=kw["encoder"], manifest=kw["manifest"], out=kw["out"], checkpoint=kw["checkpoint"],
        random_init=kw["random_init"], encoder_options=_parse_options(kw["encoder_options"]), labels=kw["labels"],
        events=kw["events"],
        layers=kw["layers"], dtype=kw["dtype"], compression=kw["compression"], batch_size=kw["batch_size"],
        chunk_clips=kw["chunk_clips"], max_seconds=kw["max_seconds"] if kw["clip_seconds"] is None else kw[
            "clip_seconds"], window=kw["window"], hop=kw["hop"], mixup=mixup, workers=kw["workers"],
        device=kw["device"],
        autocast=kw["autocast"], skip_bad=kw["skip_bad"], follow_symlinks=kw["follow_symlinks"],
        shard=_parse_shard(kw["shard"]),
        overwrite=kw["overwrite"], progress=not kw["no_progress"],
    )
    report = extract(config)
    click.echo(final_line(report))


def final_line(report) -> str:
    """What `extract` prints last: rows written, speed, completeness, skipped and cropped clips."""
    state = "complete" if report.complete else "partial (other shards still to run)"
    rows = f"{report.clips_written} rows" if report.n_clips != report.recordings else f"{report.clips_written} clips"
    text = (f"{report.store}: {rows} extracted in {report.seconds:.1f} s ({report.clips_per_second:.1f}/s on "
            f"{report.device}); store {state}; {len(report.skipped)} bad row(s) skipped; ")
    if report.cropped:
        return text + (f"{report.cropped} clip(s) CROPPED to {report.row_seconds:.2f} s, {report.lost_seconds:.1f} s "
                       f"of audio lost (`embedcache info {report.store}` lists them; --window keeps them whole)")
    return text + "nothing cropped"


@click.command("info")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_command(store: str, as_json: bool) -> None:
    """Clips, splits, labels, layers, token grid, dtype, size and provenance of a store.

    \b
    Examples:
      embedcache info runs/sample.zarr
      embedcache info s3://bucket/sample.zarr --json
    """
    from embedcache.store import TokenStore
    from embedcache.store.summary import format_summary, summarize

    summary = summarize(TokenStore.open(store, allow_incomplete=True))
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else format_summary(summary))


@click.command("quickstart")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where the store and probe runs go.")
@click.option("--encoder", help="Encoder to use instead of the default.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), help="Checkpoint for --encoder.")
@click.option("--seeds", default=1, show_default=True, help="Seeds per probe (mean +- std).")
@click.option("--no-probes", is_flag=True, help="Only build and extract the sample set.")
def quickstart_command(
    out_dir: str | None, encoder: str | None, checkpoint: str | None, seeds: int, no_probes: bool
) -> None:
    """Build the bundled sample set, extract it with the default encoder, train linear/attentive/protobin.

    \b
    Examples:
      embedcache quickstart
      embedcache quickstart --encoder vit --seeds 3 --out runs/qs-vit
    """
    from pathlib import Path

    from embedcache.quickstart import REPO_ROOT, run_quickstart
    from embedcache.store import TokenStore
    from embedcache.store.summary import format_summary, summarize

    result = run_quickstart(
        out_dir=Path(out_dir) if out_dir else REPO_ROOT / "runs" / "quickstart", encoder=encoder,
        checkpoint=checkpoint,
        probes=() if no_probes else ("linear", "attentive", "protobin"), seeds=seeds, log=click.echo,
    )
    click.echo(format_summary(summarize(TokenStore.open(result.store))))
    if result.probe_table:
        click.echo(result.probe_table)
    click.echo(f"store: {result.store}")


COMMANDS = [encoders_command, extract_command, info_command, quickstart_command]
