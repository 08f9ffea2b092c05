"""Sharing commands: verify, pack, copy, append, export (HDF5), import and convert."""

from __future__ import annotations

import json

import click


@click.command("verify")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-values", is_flag=True, help="Skip the NaN/inf scan of tokens (still decodes every chunk).")
def verify_command(store: str, as_json: bool, no_values: bool) -> None:
    """Decode every chunk of STORE (path, .zip or URL) and check markers, counts, NaN/inf and provenance.

    \b
    Examples:
      embedcache verify runs/sample.zarr
      embedcache verify received.zip --json
    """
    from embedcache.store.verify import verify_store

    report = verify_store(store, check_values=not no_values)
    if as_json:
        click.echo(json.dumps({
            "store": report.url, "ok": report.ok, "arrays": report.arrays_checked, "chunks": report.chunks_checked,
            "bytes_decoded": report.bytes_decoded, "seconds": round(report.seconds, 3),
            "problems": [{"key": p.key, "what": p.what} for p in report.problems],
        }, indent=2))
    elif report.ok:
        click.echo(f"{report.url}: OK: {report.chunks_checked} chunks in {report.arrays_checked} arrays decoded "
                   f"({report.bytes_decoded / 1e6:.1f} MB) in {report.seconds:.2f} s")
    else:
        click.secho(f"{report.url}: {len(report.problems)} problem(s):", fg="red", err=True)
        for problem in report.problems[:500]:
            click.echo(f"  {problem}", err=True)
        if len(report.problems) > 500:
            click.echo(f"  ... and {len(report.problems) - 500} more (use --json for all)", err=True)
    if not report.ok:
        raise SystemExit(1)


@click.command("pack")
@click.argument("store")
@click.argument("zip_path", metavar="OUT.zip")
@click.option("--overwrite", is_flag=True, help="Replace OUT.zip if it is a packed token store (never another file).")
def pack_command(store: str, zip_path: str, overwrite: bool) -> None:
    """Pack a complete STORE into one .zip that every command opens directly (read-only).

    \b
    Example:
      embedcache pack runs/sample.zarr runs/sample.zip
    """
    from embedcache.store.pack import pack_store

    report = pack_store(store, zip_path, overwrite=overwrite)
    click.echo(f"{report.destination}: {report.objects} objects, {report.bytes / 1e6:.2f} MB in "
               f"{report.seconds:.2f} s")


@click.command("copy")
@click.argument("source")
@click.argument("destination")
@click.option("--overwrite", is_flag=True,
              help="Replace a token store already at DESTINATION (other files and folders are never replaced).")
def copy_command(source: str, destination: str, overwrite: bool) -> None:
    """Copy a store byte for byte between places: directories, s3://... (or other fsspec URLs) and .zip files.

    DESTINATION must be new, empty or a token store to replace, and never SOURCE itself (by any spelling or link).

    \b
    Examples:
      embedcache copy runs/sample.zarr s3://bucket/sample.zarr
      embedcache copy received.zip runs/received.zarr
    """
    from embedcache.store.pack import copy_store

    report = copy_store(source, destination, overwrite=overwrite)
    click.echo(f"{report.destination}: {report.objects} objects, {report.bytes / 1e6:.2f} MB in {report.seconds:.2f} s "
               f"({report.megabytes_per_second:.1f} MB/s)")


@click.command("append")
@click.argument("store")
@click.argument("source")
def append_command(store: str, source: str) -> None:
    """Add SOURCE's new clips (or, for the same clips, its new layers) to STORE in place; same encoder only.

    \b
    Example:
      embedcache append runs/as20k.zarr runs/more_clips.zarr
    """
    from embedcache.store.grow import append_store

    report = append_store(store, source)
    what = f"{report.clips_added} clips" if report.mode == "clips" else f"layers {report.layers_added}"
    click.echo(f"{report.store}: appended {what} ({report.chunks_written} chunks written in {report.seconds:.1f} s)")


@click.command("export")
@click.argument("store")
@click.argument("h5_path", metavar="OUT.h5")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT.h5 if it exists.")
def export_command(store: str, h5_path: str, compression: str, overwrite: bool) -> None:
    """Write STORE to one HDF5 file: tokens, prefix, labels, grid, valid tokens, clip ids, splits, provenance.

    \b
    Example:
      embedcache export runs/sample.zarr runs/sample.h5 --compression gzip
    """
    from embedcache.store.hdf5 import export_hdf5

    out = export_hdf5(store, h5_path, compression=None if compression == "none" else compression,
                      overwrite=overwrite)
    click.echo(f"{out}: written ({out.stat().st_size / 1e6:.2f} MB)")


@click.command("import")
@click.argument("h5_path", metavar="IN.h5", type=click.Path(dir_okay=False))
@click.argument("store")
@click.option("--overwrite", is_flag=True,
              help="Replace a token store already at STORE (other files and folders are never replaced).")
def import_command(h5_path: str, store: str, overwrite: bool) -> None:
    """Create STORE (directory or URL) from an HDF5 file written by `embedcache export`.

    Links to other files, virtual datasets and external raw storage are refused before anything is read.

    \b
    Example:
      embedcache import runs/sample.h5 runs/imported.zarr
    """
    from embedcache.store.hdf5 import import_hdf5

    opened = import_hdf5(h5_path, store, overwrite=overwrite)
    click.echo(f"{opened.path}: imported {opened.n_clips} clips, layers {opened.layers}")


@click.command("convert")
@click.argument("source")
@click.argument("destination")
@click.option("--dtype", required=True, type=click.Choice(["int8", "float16", "bfloat16", "float32"]),
              help="Token dtype of the new store; int8: symmetric codes with one float16 scale per token.")
@click.option("--overwrite", is_flag=True,
              help="Replace a token store already at DESTINATION (other files and folders are never replaced).")
@click.option("--no-verify", is_flag=True, help="Skip the `verify` pass over the finished store.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def convert_command(source: str, destination: str, dtype: str, overwrite: bool, no_verify: bool,
                    no_progress: bool) -> None:
    """Write SOURCE's tokens as another dtype into a new store DESTINATION, chunk by chunk.

    Labels, splits, row arrays and provenance are kept, the conversion is recorded in provenance.converted, and the
    result is verified. Interrupted (even kill -9), the same command resumes where it stopped.

    \b
    Examples:
      embedcache convert runs/sample.zarr runs/sample-int8.zarr --dtype int8
      embedcache convert runs/sample-int8.zarr runs/sample-f16.zarr --dtype float16
    """
    from tqdm import tqdm

    from embedcache.store.convert import convert_store

    with tqdm(unit="chunk", disable=no_progress, desc=f"convert to {dtype}") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = convert_store(source, destination, dtype, overwrite=overwrite, verify=not no_verify,
                               progress=progress)
    sizes = ""
    if report.source_bytes and report.destination_bytes:
        share = report.destination_bytes / report.source_bytes
        sizes = (f"; {report.destination_bytes / 1e6:.2f} MB on disk, {share:.2f} of the source's "
                 f"{report.source_bytes / 1e6:.2f} MB")
    checked = "" if no_verify else ", verified"
    click.echo(f"{report.destination}: {report.dtype}, {report.chunks_written} of {report.chunks_total} chunks "
               f"converted in {report.seconds:.1f} s{checked}{sizes}")


COMMANDS = [verify_command, pack_command, copy_command, append_command, export_command, import_command,
            convert_command]
