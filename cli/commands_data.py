"""`embedcache manifest ...`: write manifests from standard dataset layouts, check one, build the sample set."""

from __future__ import annotations

import csv
from pathlib import Path

import click

from embedcache.datasets import (
    build_sample_set,
    find_bad_rows,
    from_audioset,
    from_esc50,
    from_fsd50k,
    from_hf,
    from_speech_commands,
    plan_class_folders,
    read_manifest,
    write_few_shot,
    write_folder_plan,
)
from embedcache.datasets.sample import DEFAULT_SAMPLE_DIR
from embedcache.errors import BadInputError, ConfigError

_OUT_HELP = "manifest CSV to write (default: ROOT/manifest.csv); labels.txt goes beside it"
# How many left-out AudioSet segments to print before pointing at the full list.
_SHOWN = 20


@click.group("manifest")
def manifest_group() -> None:
    """Write a manifest (clip_id, path, labels, split) from a dataset layout, or check one."""


@manifest_group.command("folders")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help=_OUT_HELP)
@click.option("--ratios", default="0.7,0.15,0.15", show_default=True, help="train,valid,test fractions")
@click.option("--seed", default=0, show_default=True, help="seed of the per-class split shuffle")
@click.option("--group-by", metavar="REGEX",
              help="group key searched in each file name (first capture group, else the match); files with one key "
                   "share a split. `takes`: the name without its trailing take number (kick_v2 -> kick)")
def folders_command(root: Path, out: Path | None, ratios: str, seed: int, group_by: str | None) -> None:
    """A folder per class under ROOT -> single-label manifest with train/valid/test splits, stratified per class.

    With --group-by, takes of one source (velocity layers, one speaker, one recording) never straddle splits.

    \b
    Example:
      embedcache manifest folders data/drums --group-by takes --out data/drums/manifest.csv
    """
    try:
        split_ratios = tuple(float(part) for part in ratios.split(","))
    except ValueError:
        raise ConfigError(f"--ratios {ratios!r}: give three numbers like 0.7,0.15,0.15") from None
    plan = plan_class_folders(root, split_ratios, seed=seed, group_by=group_by)
    path = write_folder_plan(plan, out)
    _report(path)
    record = path.with_name(path.stem + ".split.json")
    if plan.record["groups"] is not None:
        click.echo(f"{plan.record['groups']} groups (--group-by {group_by}), none in two splits; "
                   f"per-class counts in {record}")
    if plan.warning:
        click.secho(f"warning: {plan.warning} (recorded in {record})", fg="yellow")


@manifest_group.command("speechcommands")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help=_OUT_HELP)
@click.option("--classes", type=click.Choice(["35", "12"]), default="35", show_default=True,
              help="35 words, or 10 words + _silence_ (1 s cuts of _background_noise_) + _unknown_ (other words)")
def speechcommands_command(root: Path, out: Path | None, classes: str) -> None:
    """Speech Commands v2 folder (word folders, validation_list.txt, testing_list.txt) -> train/valid/test manifest.

    \b
    Example:
      embedcache manifest speechcommands speech_commands_v0.02 --classes 12
    """
    path, notes = from_speech_commands(root, out, classes=int(classes))
    _report(path)
    for note in notes:
        click.echo(note)


@manifest_group.command("hf")
@click.argument("path")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="manifest CSV to write; embedded audio goes to audio/<split>/ beside it")
@click.option("--audio-column", default="audio", show_default=True)
@click.option("--label-column", required=True,
              help="class index or name, or a list of them (multi-label); ClassLabel names are read from the features")
@click.option("--split-map", "split_maps", multiple=True, metavar="FROM=TO[,FROM=TO]",
              help="rename splits, e.g. test_5s=test (repeat or comma-separate); splits not named are left out")
@click.option("--split-column", help="take each row's split from this column instead of the source's splits")
@click.option("--id-column", help="clip ids from this column (default: <split>/<row number>)")
@click.option("--label-names", type=click.Path(dir_okay=False, path_type=Path),
              help="class names, one per line (line i names index i), when the features have none")
@click.option("--copy-audio", is_flag=True, help="copy audio files given by path beside the manifest")
def hf_command(path: str, out: Path, audio_column: str, label_column: str, split_maps: tuple[str, ...],
               split_column: str | None, id_column: str | None, label_names: Path | None, copy_audio: bool) -> None:
    """A Hugging Face data set saved locally (save_to_disk folder, .parquet/.arrow files) -> manifest. Never downloads.

    Needs the `datasets` package: pip install "embedcache[hf]".

    \b
    Example:
      embedcache manifest hf birdset_hsn/ --label-column ebird_code_multilabel --out hsn/manifest.csv
    """
    result = from_hf(path, out, label_column, audio_column=audio_column, split_map=_split_map(split_maps),
                     split_column=split_column, id_column=id_column, label_names_file=label_names,
                     copy_audio=copy_audio)
    _report(result.manifest)
    for note in result.notes:
        click.echo(note)
    _write_left_out(result.manifest, result.left_out, "row")


@manifest_group.command("fewshot")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--shots", default=64, show_default=True, help="positive clips per class")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="few-shot manifest to write (default: MANIFEST.<k>shot-seed<S>.csv beside it)")
@click.option("--split", default="train", show_default=True, help="the split sampled; others copied as they are")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="label vocabulary (default: labels.txt beside MANIFEST, if any)")
def fewshot_command(manifest: Path, shots: int, seed: int, out: Path | None, split: str, labels: Path | None) -> None:
    """k clips per class from MANIFEST's train split (multi-label aware, seeded); valid and test copied unchanged.

    A selected clip counts for every label it carries; classes are filled rarest first, so a class may end with more
    than k positives, and one with fewer than k train clips gets them all (both reported).

    \b
    Example:
      embedcache manifest fewshot hsn/manifest.csv --shots 64 --seed 0 --out hsn/64shot.csv
    """
    path, few = write_few_shot(manifest, shots, seed, out=out, split=split, labels_path=labels)
    _report(path)
    short = {name: n for name, n in few.available.items() if n < shots}
    over = [name for name, n in few.selected.items() if n > shots]
    shown = ", ".join(f"{name} {n}" for name, n in list(short.items())[:_SHOWN])
    click.echo(f"{shots}-shot {split}: {few.record['selected_clips']} of {few.record['train_clips']} clips; "
               f"{len(few.label_names) - len(short)} classes have {shots}+ positives ({len(over)} more than {shots} "
               f"through co-occurring labels), {len(short)} fewer" + (f" (all they have: {shown})" if short else "")
               + f"; per class: {path.with_name(path.stem + '.split.json')}")


@manifest_group.command("esc50")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help=_OUT_HELP)
def esc50_command(root: Path, out: Path | None) -> None:
    """ESC-50 folder (meta/esc50.csv, audio/) -> manifest with splits fold1..fold5.

    \b
    Example:
      embedcache manifest esc50 ESC-50-master --out esc50/manifest.csv
    """
    _report(from_esc50(root, out))


@manifest_group.command("fsd50k")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help=_OUT_HELP)
def fsd50k_command(root: Path, out: Path | None) -> None:
    """FSD50K folder (FSD50K.ground_truth/, FSD50K.dev_audio/, FSD50K.eval_audio/) -> train/valid/test manifest.

    \b
    Example:
      embedcache manifest fsd50k FSD50K --out fsd50k/manifest.csv
    """
    _report(from_fsd50k(root, out))


@manifest_group.command("desed")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help=_OUT_HELP + " and events.tsv")
@click.option("--set", "sets", multiple=True,
              help="SPLIT=TSV,AUDIO_DIR relative to ROOT (globs allowed), repeatable; default: synthetic train and "
                   "validation soundscapes as train and valid, the real validation set as test.")
def desed_command(root: Path, out: Path | None, sets: tuple[str, ...]) -> None:
    """DESED (strong TSVs, audio folders) -> manifest, labels.txt and events.tsv (strong labels, kept by extract).

    \b
    Examples:
      embedcache manifest desed DESED --out desed/manifest.csv
      embedcache manifest desed DESED --set test=metadata/eval/public.tsv,audio/eval/public
    """
    from embedcache.datasets.events import from_desed

    chosen = {}
    for item in sets:
        split, sep, pair = item.partition("=")
        tsv, comma, audio = pair.partition(",")
        if not sep or not comma or not split.strip() or not tsv.strip() or not audio.strip():
            raise ConfigError(f"--set {item!r}: write SPLIT=TSV,AUDIO_DIR, e.g. test=metadata/eval/public.tsv,"
                              "audio/eval/public")
        chosen[split.strip()] = (tsv.strip(), audio.strip())
    path, left_out = from_desed(root, chosen or None, out)
    _write_left_out(path, left_out, "file")
    _report(path)


@manifest_group.command("urbansed")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help=_OUT_HELP + " and events.tsv")
def urbansed_command(root: Path, out: Path | None) -> None:
    """URBAN-SED (audio/<split>/, annotations/<split>/*.txt) -> manifest, labels.txt and events.tsv (strong labels).

    \b
    Example:
      embedcache manifest urbansed URBAN-SED_v2.0.0 --out urbansed/manifest.csv
    """
    from embedcache.datasets.events import from_urbansed

    _report(from_urbansed(root, out))


@manifest_group.command("audioset")
@click.option("--segments", "segments", multiple=True, required=True, metavar="SPLIT=CSV",
              help="a segments CSV and the split it becomes, e.g. train=balanced_train_segments.csv (repeat)")
@click.option("--class-indices", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="class_labels_indices.csv")
@click.option("--audio-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="folder holding the downloaded segments (searched recursively)")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="manifest CSV to write; must be in a folder that contains --audio-dir")
def audioset_command(segments: tuple[str, ...], class_indices: Path, audio_dir: Path, out: Path) -> None:
    """AudioSet segment CSVs -> multi-label manifest; segments without audio are listed, not silently dropped.

    \b
    Example:
      embedcache manifest audioset --segments train=balanced_train_segments.csv --segments test=eval_segments.csv \\
          --class-indices class_labels_indices.csv --audio-dir audioset/ --out audioset/as20k.csv
    """
    segments_csvs = {}
    for item in segments:
        split, sep, path = item.partition("=")
        if not sep or not split.strip() or not path.strip():
            raise ConfigError(f"--segments {item!r}: write SPLIT=CSV, e.g. train=balanced_train_segments.csv")
        segments_csvs[split.strip()] = Path(path.strip())
    written, left_out = from_audioset(segments_csvs, class_indices, audio_dir, out)
    _report(written)
    _write_left_out(written, left_out, "segment")


@manifest_group.command("check")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="label vocabulary, one per line (default: labels.txt beside the manifest, if any)")
@click.option("--workers", default=2, show_default=True, help="decoding processes")
@click.option("--follow-symlinks", is_flag=True, help="let symlinks in the manifest's folder lead outside it")
def check_command(manifest: Path, labels: Path | None, workers: int, follow_symlinks: bool) -> None:
    """Decode every file of MANIFEST and list every bad row with its reason (exit 1 if any).

    \b
    Example:
      embedcache manifest check data/sample/manifest.csv
    """
    good, bad_rows = find_bad_rows(manifest, labels, workers=workers, follow_symlinks=follow_symlinks)
    for clip_id, reason in bad_rows:
        click.echo(f"{clip_id}: {reason}")
    click.echo(f"{len(good)} good clip(s), {len(bad_rows)} bad row(s); {len(good.label_names)} labels; "
               f"splits: {', '.join(good.split_names()) or 'none'}")
    if bad_rows:
        raise BadInputError(f"{manifest}: {len(bad_rows)} bad row(s) listed above; fix them, or extract with "
                            "--skip-bad to record them as skipped")


@manifest_group.command("sample")
@click.option("--out", "out_dir", default=str(DEFAULT_SAMPLE_DIR), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="folder for the generated clips")
@click.option("--clips", "n_clips", default=120, show_default=True)
@click.option("--seconds", "clip_seconds", default=5.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
def sample_command(out_dir: Path, n_clips: int, clip_seconds: float, seed: int) -> None:
    """Build the bundled multi-label sample set (short events over a quiet background) from data/sources.

    \b
    Example:
      embedcache manifest sample --out data/sample --clips 120
    """
    _report(build_sample_set(out_dir, n_clips=n_clips, clip_seconds=clip_seconds, seed=seed))


def _split_map(items: tuple[str, ...]) -> dict[str, str] | None:
    """`--split-map a=b,c=d --split-map e=f` -> {'a': 'b', 'c': 'd', 'e': 'f'} (None when not given)."""
    mapping: dict[str, str] = {}
    for item in (part for text in items for part in text.split(",") if part.strip()):
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ConfigError(f"--split-map {item!r}: write FROM=TO, e.g. test_5s=test")
        mapping[source.strip()] = target.strip()
    return mapping or None


def _write_left_out(manifest: Path, left_out: list[tuple[str, str]], kind: str) -> None:
    """List what an adapter left out in <manifest stem>.left_out.csv and print the first few."""
    if not left_out:
        return
    listing = manifest.with_name(manifest.stem + ".left_out.csv")
    with open(listing, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([kind, "reason"])
        writer.writerows(left_out)
    click.secho(f"{len(left_out)} {kind}(s) left out (full list: {listing}):", fg="yellow")
    for name, reason in left_out[:_SHOWN]:
        click.echo(f"  {name}: {reason}")
    if len(left_out) > _SHOWN:
        click.echo(f"  ... and {len(left_out) - _SHOWN} more")


def _report(path: Path) -> None:
    """One line saying what was written."""
    manifest = read_manifest(path)
    kind = "multi-label" if manifest.is_multilabel() else "single-label"
    counts = ", ".join(f"{split} {sum(c.split == split for c in manifest.clips)}" for split in manifest.split_names())
    click.echo(f"wrote {path}: {len(manifest)} clips, {len(manifest.label_names)} labels ({kind}); {counts}")


COMMANDS = [manifest_group]
