"""The extract stage: decode a manifest's clips, run a frozen encoder once, write every patch token to a store."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
import zarr
from tqdm import tqdm

import embedcache
from embedcache import audio, distributed, encoders
from embedcache.checkpoints import sha256_file
from embedcache.datasets import Manifest, find_bad_rows
from embedcache.datasets.events import default_events_path, read_events
from embedcache.device import resolve_device
from embedcache.errors import BadInputError, ConfigError, StoreError
from embedcache.events import Events
from embedcache.rows import DEFAULT_MAX_SECONDS, Mixup, RowPlan, add_mixup, mix, plan_clips, plan_windows
from embedcache.store import layout, urls
from embedcache.store.writer import (
    BackgroundChunkWriter,
    RowInfo,
    StoreSpec,
    create_store,
    fingerprint_of,
    mark_complete_if_done,
    open_for_resume,
    pending_chunks,
    remove_store,
    store_attrs,
)


@dataclass
class ExtractConfig:
    """Everything `extract` needs; plain data so it round-trips into the provenance."""

    encoder: str
    manifest: str
    out: str
    checkpoint: str | None = None
    random_init: bool = False
    encoder_options: dict = field(default_factory=dict)
    labels: str | None = None
    layers: str = "last"
    dtype: str = "float16"
    compression: str = "zstd"
    batch_size: int = 16
    chunk_clips: int | None = None
    max_seconds: float | None = None
    window: float | None = None
    hop: float | None = None
    # Pre-generated augmented training copies (`--augment mixup --copies 5 --p 0.9`), or None.
    mixup: Mixup | None = None
    # Strong labels (onset, offset, label per event): None reads events.tsv beside the manifest when it is there.
    events: str | None = None
    workers: int | None = None
    device: str = "auto"
    autocast: str = "none"
    skip_bad: bool = False
    follow_symlinks: bool = False
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    progress: bool = True
    wait_for_store_s: float = 600.0


@dataclass
class ExtractReport:
    """What one `extract` call did."""

    store: str
    n_clips: int
    clips_written: int
    chunks_written: int
    seconds: float
    device: str
    skipped: list[dict]
    complete: bool
    recordings: int = 0
    cropped: int = 0
    lost_seconds: float = 0.0
    row_seconds: float = 0.0

    @property
    def clips_per_second(self) -> float:
        return self.clips_written / self.seconds if self.seconds > 0 else float("nan")


class _RowDataset(torch.utils.data.Dataset):
    """Decodes (and resamples) the samples of one row; runs in DataLoader worker processes."""

    def __init__(self, paths: list[Path], plan: RowPlan, sample_rate: int):
        self.paths, self.plan, self.sample_rate = paths, plan, sample_rate

    def __len__(self) -> int:
        return self.plan.n_rows

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        wave = self._load(index)
        if self.plan.n_base is not None and index >= self.plan.n_base:
            recipe = self.plan.mixes[index - self.plan.n_base]
            if recipe:
                wave = mix(wave, [self._load(row) for row, _ in recipe], [snr for _, snr in recipe])
        return index, torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))

    def _load(self, row: int) -> np.ndarray:
        plan = self.plan
        path = self.paths[int(plan.clip[row])]
        return audio.load_segment(path, self.sample_rate, int(plan.offsets[row]), int(plan.lengths[row]))


def _collate(items: list) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Rows zero-padded at the end to the longest in the batch, and each row's real length."""
    indices, waves = zip(*items)
    lengths = torch.tensor([max(1, len(wave)) for wave in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = wave
    return list(indices), batch, lengths


def _autocast_context(device: torch.device, mode: str):
    if mode == "none":
        return nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if mode not in dtypes:
        raise ConfigError(f"--autocast {mode!r}: use none, bf16 or fp16")
    return torch.autocast(device_type=device.type, dtype=dtypes[mode])


def real_lengths(manifest: Manifest, sample_rate: int) -> np.ndarray:
    """Each clip's length in samples at `sample_rate`, from the file headers."""
    lengths = []
    for clip in manifest.clips:
        info = soundfile.info(str(clip.path))
        lengths.append(math.ceil(info.frames * sample_rate / info.samplerate))
    return np.asarray(lengths, np.int64)


def strong_labels(config: ExtractConfig, manifest: Manifest, skipped: list[dict],
                  sample_rate: int) -> tuple[Events | None, str | None]:
    """(the manifest clips' events in samples at `sample_rate`, the events file's sha256), or (None, None) when there
    is no events file (--events, or events.tsv beside the manifest)."""
    path = Path(config.events) if config.events else default_events_path(config.manifest)
    if path is None:
        return None, None
    if config.mixup is not None:
        raise ConfigError(f"{path}: sound events and --augment mixup exclude each other (a mixed copy would need the "
                          "events of every row mixed into it); extract without one of them")
    found = read_events(path, manifest, ignore=[item["clip_id"] for item in skipped])
    ids = np.array([manifest.clips[event.clip].clip_id for event in found], dtype=str)
    onsets = np.array([round(event.onset * sample_rate) for event in found], np.int64)
    offsets = np.maximum(onsets + 1, np.array([round(event.offset * sample_rate) for event in found], np.int64))
    codes = np.array([manifest.label_names.index(event.label) for event in found], np.int32)
    return Events(ids, onsets, offsets, codes), sha256_file(path)


def row_labels(clip_labels: np.ndarray, plan: RowPlan) -> np.ndarray:
    """[rows, C] labels: each row's clip's, and for a mixup copy the union with every row mixed into it."""
    labels = clip_labels[plan.clip].copy()
    for i, recipe in enumerate(plan.mixes):
        for source, _ in recipe:
            labels[plan.n_base + i] |= labels[source]
    return labels


def plan_rows(config: ExtractConfig, encoder: encoders.Encoder, lengths: np.ndarray) -> RowPlan:
    """The store's rows for clips of `lengths` samples: windows (--window), or one row per clip cropped at
    --max-seconds (default: a fixed-length encoder's input, else DEFAULT_MAX_SECONDS)."""
    rate, fixed = encoder.sample_rate, encoder.max_input_samples()
    fixed_text = f"{encoder.name}'s fixed input of {fixed / rate:.3f} s" if fixed else ""
    if config.window is not None:
        if config.max_seconds is not None:
            raise ConfigError("--window and --max-seconds exclude each other: windows already bound every row")
        window = round(config.window * rate)
        hop = round((config.hop if config.hop is not None else config.window) * rate)
        if window < encoder.min_samples() or hop < 1:
            raise ConfigError(f"--window {config.window:g} / --hop {config.hop}: use a window of at least "
                              f"{encoder.min_samples() / rate:.3f} s and a positive hop")
        if fixed is not None and window > fixed:
            raise ConfigError(f"--window {config.window:g}: longer than {fixed_text}; use --window "
                              f"{math.floor(fixed / rate * 100) / 100:g} or less")
        return plan_windows(lengths, window, hop)
    if config.hop is not None:
        raise ConfigError("--hop needs --window")
    limit = None
    if config.max_seconds is not None:
        if config.max_seconds <= 0:
            raise ConfigError(f"--max-seconds {config.max_seconds:g}: must be positive")
        limit = round(config.max_seconds * rate)
        if fixed is not None and limit > fixed:
            raise ConfigError(f"--max-seconds {config.max_seconds:g}: longer than {fixed_text}; keep long "
                              f"recordings whole with --window {math.floor(fixed / rate * 100) / 100:g} instead")
    elif fixed is None:
        limit = round(DEFAULT_MAX_SECONDS * rate)
    return plan_clips(lengths, limit, fixed)


def too_short(manifest: Manifest, lengths: np.ndarray, encoder: encoders.Encoder) -> list[tuple[str, str]]:
    """(clip id, reason) of every clip too short to give the encoder one token."""
    minimum, rate = encoder.min_samples(), encoder.sample_rate
    return [
        (clip.clip_id, f"too short for {encoder.name} ({length / rate:.3f} s; it needs at least "
                       f"{minimum / rate:.3f} s for one token)")
        for clip, length in zip(manifest.clips, lengths.tolist(), strict=True) if length < minimum
    ]


def align_batches(chunk_clips: int, batch_size: int) -> tuple[int, int]:
    """(chunk_clips, batch_size) adjusted so the smaller divides the larger.

    Batches then never straddle a unit of max(chunk_clips, batch_size) clips, so a resumed or sharded run feeds
    the encoder exactly the batches an uninterrupted run does, and its bytes are identical.
    """
    if chunk_clips <= batch_size:
        return chunk_clips, math.ceil(batch_size / chunk_clips) * chunk_clips
    return math.ceil(chunk_clips / batch_size) * batch_size, batch_size


def shard_units(n_units: int, shard: tuple[int, int]) -> range:
    """Contiguous unit range of shard i of n, so each shard writes sequential chunks."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ConfigError(f"--shard {index}/{count}: use i/n with 0 <= i < n")
    return range(n_units * index // count, n_units * (index + 1) // count)


def _provenance(config: ExtractConfig, encoder: encoders.Encoder, manifest: Manifest, extra: dict) -> dict:
    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": {
            "embedcache": embedcache.__version__,
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
            "zarr": zarr.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "host": {"platform": platform.platform(), "device": extra["device"]},
        "encoder": {
            "name": config.encoder,
            "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "config": encoder.config(),
            "random_init": config.random_init,
            "options": config.encoder_options,
            "checkpoint": config.checkpoint,
            "checkpoint_sha256": extra["checkpoint_sha256"],
            "num_layers": encoder.num_layers,
            "embed_dim": encoder.embed_dim,
            "num_prefix": encoder.num_prefix,
            "sample_rate": encoder.sample_rate,
            "time_steps": encoder.time_steps(),
        },
        "frontend": encoder.frontend_config(),
        "layers": extra["layers"],
        "dtype": config.dtype,
        "clip_policy": {**extra["plan"].describe(), "sample_rate": encoder.sample_rate,
                        "max_samples": extra["max_samples"], "semantics": encoder.clip_semantics()},
        "manifest": {"path": str(manifest.source), "sha256": manifest.sha256},
        "batch_size": extra["batch_size"],
        "autocast": config.autocast,
        "fingerprint_fields": extra["fingerprint_fields"],
    }


def _check_disk(out: str, needed: int) -> None:
    """Refuse before writing anything when a local destination cannot hold the uncompressed tokens."""
    if "://" in out:
        return
    parent = Path(out).resolve()
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if needed > free:
        raise StoreError(
            f"{out}: the store needs about {needed / 1e9:.2f} GB (uncompressed tokens) but only "
            f"{free / 1e9:.2f} GB is free on {parent}; free space, choose another --out, or use --dtype float16"
        )


def _wait_for_store(path: str, seconds: float) -> zarr.Group:
    """Shards other than 0 wait for shard 0 to create the store."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            group = urls.open_group(path, mode="r+")
            store_attrs(group)
            return group
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, StoreError, KeyError):
            time.sleep(0.5)
    raise StoreError(f"{path}: shard 0 did not create the store within {seconds:.0f} s; start shard 0 first")


def _shard_manifest(config: ExtractConfig) -> tuple[Manifest, list[tuple[str, str]]]:
    """The clips of a store shard 0 created, without decoding every file again.

    Shard 0 decodes every file to find the bad ones; the other shards take its verdict (the store's clip ids and
    skipped rows) and only parse the manifest for the paths.
    """
    attrs = store_attrs(_wait_for_store(str(config.out), config.wait_for_store_s))
    parsed, _ = find_bad_rows(config.manifest, config.labels, decode=False, follow_symlinks=config.follow_symlinks)
    by_id = {clip.clip_id: clip for clip in parsed.clips}
    group = zarr.open_group(store=urls.open_store(str(config.out), "r"), mode="r")
    stored_ids = list(dict.fromkeys(group["recording_ids"][:].tolist()))
    missing = [clip_id for clip_id in stored_ids if clip_id not in by_id]
    if missing:
        raise StoreError(
            f"{config.out}: {len(missing)} clip(s) in the store are not in {config.manifest} (e.g. {missing[0]!r}); "
            "every shard must be given the manifest shard 0 used"
        )
    manifest = Manifest([by_id[clip_id] for clip_id in stored_ids], parsed.label_names, parsed.source, parsed.sha256)
    return manifest, [(item["clip_id"], item["reason"]) for item in attrs.get("skipped", [])]


def _with_default_checkpoint(config: ExtractConfig) -> ExtractConfig:
    """`--encoder whisper` without --checkpoint uses the demo extra's tiny.en when it is installed, and says so."""
    if config.encoder != "whisper" or config.checkpoint is not None or config.random_init:
        return config
    from embedcache.encoders.whisper import find_demo_whisper_checkpoint

    found = find_demo_whisper_checkpoint()
    if found is None:
        return config  # the factory explains what to pass
    if config.progress:
        tqdm.write(f"whisper: no --checkpoint given, using the demo extra's tiny.en: {found}", file=sys.stderr)
    return replace(config, checkpoint=str(found))


def extract(config: ExtractConfig) -> ExtractReport:
    """Run the extract stage; resumes an interrupted store made with the same settings."""
    if config.dtype not in layout.DTYPES:
        raise ConfigError(f"--dtype {config.dtype!r}: choose one of {', '.join(layout.DTYPES)}")
    launched = distributed.launched_rank()
    if launched is not None and config.shard == (0, 1):
        rank, world, local_rank = launched
        config = replace(config, shard=(rank, world))
        if config.device == "auto" and torch.cuda.is_available():
            config = replace(config, device=f"cuda:{local_rank}")
        distributed.init()
    device = resolve_device(config.device)
    config = _with_default_checkpoint(config)
    encoder = encoders.create(
        config.encoder, checkpoint=config.checkpoint, random_init=config.random_init, **config.encoder_options
    )
    try:
        layers = encoders.resolve_layers(config.layers, encoder.num_layers)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    workers = config.workers if config.workers is not None else min(4, max(1, (os.cpu_count() or 2) - 1))

    if config.shard[0] == 0:
        manifest, bad = find_bad_rows(config.manifest, config.labels, workers=max(1, workers),
                                      follow_symlinks=config.follow_symlinks)
    else:
        distributed.barrier()  # pairs with rank 0's barrier once the store exists
        manifest, bad = _shard_manifest(config)
    lengths = real_lengths(manifest, encoder.sample_rate)
    short = too_short(manifest, lengths, encoder)
    bad = list(bad) + short
    if bad and not config.skip_bad:
        raise BadInputError(
            f"{config.manifest}: {len(bad)} bad row(s); nothing was extracted. Fix them, or pass --skip-bad "
            "to record them in the store and extract the rest",
            bad,
        )
    if short:
        names = {clip_id for clip_id, _ in short}
        keep = [index for index, clip in enumerate(manifest.clips) if clip.clip_id not in names]
        manifest = Manifest([manifest.clips[i] for i in keep], manifest.label_names, manifest.source, manifest.sha256)
        lengths = lengths[keep]
    if not manifest.clips:
        raise BadInputError(f"{config.manifest}: no usable clips", bad)
    skipped = [{"clip_id": clip_id, "reason": reason} for clip_id, reason in bad]
    plan = plan_rows(config, encoder, lengths)
    if config.mixup is not None:
        splits = np.array([c.split for c in manifest.clips])
        if config.mixup.split not in set(splits.tolist()):
            raise ConfigError(f"--augment mixup: the manifest has no split {config.mixup.split!r} to augment "
                              f"(its splits: {', '.join(manifest.split_names())})")
        plan = add_mixup(plan, np.flatnonzero(splits[plan.clip] == config.mixup.split), config.mixup)
    n_time, n_freq = encoder.token_grid(plan.capacity)
    n_clips = plan.n_rows
    row_ids = plan.row_ids([c.clip_id for c in manifest.clips])
    chunk_clips = config.chunk_clips or layout.choose_chunk_clips(
        n_time * n_freq, encoder.embed_dim, config.dtype, n_clips
    )
    chunk_clips, batch_size = align_batches(min(chunk_clips, n_clips), config.batch_size)
    checkpoint_sha = sha256_file(config.checkpoint) if config.checkpoint else None
    fingerprint_fields = {
        "encoder": config.encoder,
        "encoder_config": encoder.config(),
        "checkpoint_sha256": checkpoint_sha,
        "layers": layers,
        "dtype": config.dtype,
        "compression": config.compression,
        "num_samples": plan.capacity,
        "rows": plan.describe(),
        "manifest_sha256": manifest.sha256,
        "skipped": skipped,
        "chunk_clips": chunk_clips,
        "batch_size": batch_size,
        "autocast": config.autocast,
    }
    events, events_sha = strong_labels(config, manifest, skipped, encoder.sample_rate)
    if events_sha is not None:  # only then: stores without events keep their fingerprints
        fingerprint_fields["events_sha256"] = events_sha
    fingerprint = fingerprint_of(fingerprint_fields)
    spec = StoreSpec(
        n_clips=n_clips, num_tokens=n_time * n_freq, num_prefix=encoder.num_prefix, embed_dim=encoder.embed_dim,
        grid=(n_time, n_freq), layers=layers, dtype=config.dtype, chunk_clips=chunk_clips,
        label_names=list(manifest.label_names), split_names=manifest.split_names(), compression=config.compression,
    )

    out = str(config.out)
    shard_index, _ = config.shard
    group = None
    if shard_index == 0:
        if config.overwrite:
            remove_store(out)
        group = open_for_resume(out, fingerprint, fingerprint_fields)
        if group is None:
            _check_disk(out, spec.token_nbytes())
            provenance = _provenance(config, encoder, manifest, {
                "device": str(device), "checkpoint_sha256": checkpoint_sha, "layers": layers, "plan": plan,
                "max_samples": None if config.max_seconds is None else round(config.max_seconds * encoder.sample_rate),
                "batch_size": batch_size, "fingerprint_fields": fingerprint_fields,
            })
            split_names = spec.split_names
            clip_splits = np.array([split_names.index(c.split) for c in manifest.clips], np.uint8)
            rows = RowInfo([manifest.clips[c].clip_id for c in plan.clip], plan.offsets, plan.lost)
            group = create_store(
                out, spec, row_ids, row_labels(manifest.label_matrix(), plan), clip_splits[plan.clip],
                plan.num_samples, provenance, fingerprint, skipped, rows, events,
            )
        distributed.barrier()  # under torchrun: every rank opens the store only after rank 0 made it
    if group is None:
        # Wait for shard 0's attributes (written last, after every array): a half-created store is not an error.
        group = _wait_for_store(out, config.wait_for_store_s)
        open_for_resume(out, fingerprint, fingerprint_fields)

    if config.progress:
        tqdm.write(describe_cost(out, spec, plan, encoder), file=sys.stderr)
    if shard_index != 0 and row_ids != group["clip_ids"][:].tolist():
        raise StoreError(f"{out}: this shard's rows differ from the store's; every shard must be given the "
                         "manifest, --window/--hop and --max-seconds shard 0 used")
    report = _run(config, encoder, manifest, plan, spec, group, device, workers, batch_size, skipped)
    rate = encoder.sample_rate
    report.recordings = len(manifest.clips)
    report.cropped = int((plan.lost > 0).sum())
    report.lost_seconds = float(plan.lost.sum() / rate)
    report.row_seconds = plan.capacity / rate
    return report


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def describe_cost(out: str, spec: StoreSpec, plan: RowPlan, encoder: encoders.Encoder) -> str:
    """What the store will cost, said before anything is written: rows, their length, padding, cropping, bytes."""
    rate = encoder.sample_rate
    rows = f"{spec.n_clips} rows" + (f" ({plan.window / rate:g} s windows, hop {plan.hop / rate:g} s)"
                                     if plan.window else "")
    if plan.mixup is not None:
        rows += f" (of which {len(plan.copy_of)} mixup copies of {plan.mixup.split!r} rows)"
    valid = sum(encoder.valid_tokens(int(n), plan.capacity) for n in plan.lengths)
    padding = 1.0 - valid / max(1, spec.n_clips * spec.num_tokens)
    lines = [
        f"{out}: {rows} x {len(spec.layers)} layer(s) x [T={spec.num_tokens}, D={spec.embed_dim}] {spec.dtype} = "
        f"about {_size(spec.token_nbytes())} before compression",
        f"  each row holds {plan.capacity / rate:.2f} s (longest clip {plan.num_samples.max() / rate:.2f} s, median "
        f"{np.median(plan.num_samples) / rate:.2f} s); {padding:.0%} of token slots are padding (stored as zeros)",
    ]
    cropped = int((plan.lost > 0).sum())
    if cropped:
        lines.append(f"  {cropped} clip(s) are longer than {plan.capacity / rate:.2f} s and will be cropped, losing "
                     f"{plan.lost.sum() / rate:.1f} s of audio; --window SECONDS keeps long recordings whole")
    return "\n".join(lines)


def _pending_batches(spec: StoreSpec, group: zarr.Group, batch_size: int, shard: tuple[int, int]) -> list[list[int]]:
    """Batches (lists of clip indices) for this shard's units that still have unwritten chunks."""
    unit_clips = max(spec.chunk_clips, batch_size)
    chunks_per_unit = unit_clips // spec.chunk_clips
    n_units = -(-spec.n_clips // unit_clips)
    pending = set(pending_chunks(group).tolist())
    batches = []
    for unit in shard_units(n_units, shard):
        unit_chunks = range(unit * chunks_per_unit, min(spec.n_chunks, (unit + 1) * chunks_per_unit))
        if not pending.intersection(unit_chunks):
            continue
        start, stop = unit * unit_clips, min(spec.n_clips, (unit + 1) * unit_clips)
        batches += [list(range(b, min(stop, b + batch_size))) for b in range(start, stop, batch_size)]
    return batches


def _run(
    config: ExtractConfig,
    encoder: encoders.Encoder,
    manifest: Manifest,
    plan: RowPlan,
    spec: StoreSpec,
    group: zarr.Group,
    device: torch.device,
    workers: int,
    batch_size: int,
    skipped: list[dict],
) -> ExtractReport:
    batches = _pending_batches(spec, group, batch_size, config.shard)
    n_todo = sum(len(b) for b in batches)
    started = time.perf_counter()
    chunks_written = 0
    if batches:
        if device.type == "cuda" and config.autocast == "none":
            # cuDNN convolutions (patch embeddings) default to TF32; "no autocast" promises fp32 tokens.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        encoder.to(device)
        dataset = _RowDataset([c.path for c in manifest.clips], plan, encoder.sample_rate)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
            pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        writer = BackgroundChunkWriter(group, spec)
        buffer = _ChunkBuffer(spec)
        bar = tqdm(total=n_todo, unit="row", disable=not config.progress, desc=f"extract {config.encoder}",
                   file=sys.stderr, dynamic_ncols=True)
        try:
            for indices, waves, lengths in loader:
                with torch.inference_mode(), _autocast_context(device, config.autocast):
                    tokens, prefix, valid = encode_rows(encoder, waves.to(device, non_blocking=True), lengths, spec)
                for chunk, payload in buffer.add(indices, tokens, prefix, valid):
                    writer.submit(chunk, *payload)
                    chunks_written += 1
                bar.update(len(indices))
        finally:
            bar.close()
            writer.close()
    distributed.barrier()  # under torchrun: completion is judged once every rank has written its share
    complete = mark_complete_if_done(group)
    return ExtractReport(
        store=str(config.out), n_clips=spec.n_clips, clips_written=n_todo, chunks_written=chunks_written,
        seconds=time.perf_counter() - started, device=str(device), skipped=skipped, complete=complete,
    )


def encode_rows(
    encoder: encoders.Encoder, waves: torch.Tensor, lengths: torch.Tensor, spec: StoreSpec
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], list[int]]:
    """Tokens [B, T, D] per layer on the store's grid for a zero-padded batch of rows with real `lengths`: each row's
    tokens are those of the row alone, zeros past its valid tokens. Also prefix tokens [B, P, D] per layer and each
    row's valid token count.

    Encoders that take real lengths see the batch in groups of similar length (`length_groups`: padding a short clip
    to a long one costs compute, quadratically in attention, and changes nothing); others see runs of equal-length
    rows only.
    """
    sizes = lengths.tolist()
    if not encoder.supports_lengths:
        runs = [[row for row, value in enumerate(sizes) if value == length] for length in sorted(set(sizes))]
        groups = [(members, encoder(waves[members, : sizes[members[0]]], spec.layers)) for members in runs]
    elif encoder.max_input_samples() is not None:  # a fixed input: every clip costs the same, keep the batch whole
        groups = [(list(range(len(sizes))), encoder(waves, spec.layers, lengths))]
    else:
        groups = []
        for members in length_groups(sizes):
            width = max(sizes[row] for row in members)
            groups.append((members, encoder(waves[members, :width], spec.layers, lengths[members])))
    tokens = {layer: waves.new_zeros((len(lengths), spec.num_tokens, spec.embed_dim)) for layer in spec.layers}
    prefix = {layer: waves.new_zeros((len(lengths), spec.num_prefix, spec.embed_dim)) for layer in spec.layers}
    valid = [0] * len(lengths)
    for members, output in groups:
        _check_output(output, spec, encoder.name)
        for row, member in enumerate(members):
            length = int(lengths[member])
            valid[member] = encoder.valid_tokens(length, max(sizes[row] for row in members))
            for layer in spec.layers:
                tokens[layer][member, : valid[member]] = output.layers[layer][row, : valid[member]]
                if spec.num_prefix:
                    prefix[layer][member] = output.prefix[layer][row]
    return tokens, prefix, valid


# A batch is split where the longest clip of a group would exceed this many times its shortest (at most a third
# of a group's samples are padding).
LENGTH_RATIO = 1.5


def length_groups(lengths: list[int], ratio: float = LENGTH_RATIO) -> list[list[int]]:
    """Row indices grouped by similar length: sorted by length, a new group whenever the next row is longer than
    `ratio` times the group's shortest."""
    groups: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lambda index: (lengths[index], index)):
        if not groups or lengths[row] > ratio * lengths[groups[-1][0]]:
            groups.append([])
        groups[-1].append(row)
    return groups


def _check_output(output: encoders.EncoderOutput, spec: StoreSpec, name: str) -> None:
    """A batch's grid may be shorter in time than the store's rows (shorter clips), never wider or longer."""
    n_time, n_freq = output.grid
    for layer in spec.layers:
        got = tuple(output.layers[layer].shape[1:])
        if n_freq != spec.grid[1] or n_time > spec.grid[0] or got != (n_time * n_freq, spec.embed_dim):
            raise ConfigError(
                f"encoder {name}: layer {layer} gave tokens {got} on grid {output.grid}, but its token_grid/embed_dim "
                f"promised at most {(spec.num_tokens, spec.embed_dim)} on grid {spec.grid}; the encoder is "
                "inconsistent"
            )


class _ChunkBuffer:
    """Collects per-batch outputs and hands back each chunk once all its clips have arrived."""

    def __init__(self, spec: StoreSpec):
        self.spec = spec
        self._parts: dict[int, list] = {}

    def add(self, indices: list[int], tokens: dict, prefix: dict, valid: list[int]):
        spec = self.spec
        # Converted (int8: quantised) where the encoder ran, so only the stored bytes leave the GPU.
        tokens = {layer: layout.encode(tokens[layer], spec.dtype) for layer in spec.layers}
        prefix = {layer: layout.encode(prefix[layer], layout.prefix_dtype(spec.dtype)) for layer in spec.layers} \
            if spec.num_prefix else {}
        for row, index in enumerate(indices):
            chunk = index // spec.chunk_clips
            self._parts.setdefault(chunk, []).append((
                index,
                {layer: _row(tokens[layer], row) for layer in spec.layers},
                {layer: _row(prefix[layer], row) for layer in prefix},
                valid[row],
            ))
            start, stop = spec.chunk_range(chunk)
            if len(self._parts[chunk]) == stop - start:
                yield chunk, self._assemble(self._parts.pop(chunk))

    def _assemble(self, parts: list) -> tuple[dict, dict, np.ndarray, dict | None]:
        """(tokens, prefix, valid_tokens, scales) of one chunk, as `write_chunk` takes them."""
        parts.sort(key=lambda part: part[0])

        def stacked(index: int, which: int) -> dict:
            return {layer: np.stack([p[index][layer][which] for p in parts]) for layer in parts[0][index]}

        quantized = layout.is_quantized(self.spec.dtype)
        return (stacked(1, 0), stacked(2, 0), np.array([p[3] for p in parts], np.int32),
                stacked(1, 1) if quantized else None)


def _row(encoded: tuple[np.ndarray, np.ndarray | None], row: int) -> tuple[np.ndarray, np.ndarray | None]:
    values, scales = encoded
    return values[row], None if scales is None else scales[row]
