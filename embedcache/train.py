"""Probe training on cached tokens: a bank of K heads trained together, every batch read once.

Data flows store -> SplitData (in memory or streamed by whole chunks) -> one TokenBatch per batch -> every head.
Each head has its own generator, AdamW and cosine schedule, and the batch order depends only on the data seed,
so a head trained in a bank of K ends bit-identical to the same head trained alone (on the CPU).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from embedcache import heads as head_registry
from embedcache import losses, metrics
from embedcache.device import resolve_device
from embedcache.errors import ConfigError, StoreError
from embedcache.settings import settings_from_dict
from embedcache.store import TokenStore, layout

IN_MEMORY = "in-memory"
STREAMING = "streaming"
DATA_PATHS = ("auto", IN_MEMORY, STREAMING)


def checked_lr(value, key: str) -> float:
    """`value` as a learning rate (a finite number > 0), else a ConfigError naming `key` (the option or config key)."""
    number = _number(value)
    if number is None or not number > 0:
        raise ConfigError(f"{key}: {_shown(value)} is not a positive finite learning rate (e.g. 1e-3)")
    return number


def checked_weight_decay(value, key: str) -> float:
    """`value` as a weight decay (a finite number >= 0), else a ConfigError naming `key`."""
    number = _number(value)
    if number is None or not number >= 0:
        raise ConfigError(f"{key}: {_shown(value)} is not a finite weight decay >= 0 (e.g. 1e-4, or 0 for none)")
    return number


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _shown(value) -> str:
    return repr(float(value)) if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)[:60]


@dataclass
class HeadSpec:
    """One member of a bank: a head kind with its options, its optimiser settings and its init seed."""

    kind: str
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    options: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ConfigError for settings the optimiser would reject with a traceback (negative or NaN lr, ...)."""
        if self.kind not in head_registry.HEAD_KINDS:
            raise ConfigError(f"head {self.kind!r}: choose one of {', '.join(head_registry.HEAD_KINDS)}")
        checked_lr(self.lr, f"head {self.kind}: lr")
        checked_weight_decay(self.weight_decay, f"head {self.kind}: weight_decay")
        if not isinstance(self.options, dict):
            raise ConfigError(f"head {self.kind}: options {self.options!r} is not a mapping")

    @property
    def label(self) -> str:
        extra = "".join(f" {key}={value}" for key, value in sorted(self.options.items()))
        return f"{self.kind} lr={self.lr:g} wd={self.weight_decay:g}{extra} seed={self.seed}"


@dataclass
class TrainConfig:
    """How a bank is trained; plain data that round-trips through YAML."""

    epochs: int = 30
    batch_size: int = 128
    warmup_epochs: float = 1.0
    data_seed: int = 0
    # None: "asl" for multi-label stores, "ce" for multi-class ones.
    loss: str | None = None
    loss_options: dict = field(default_factory=dict)
    # "auto" loads a split into memory when it fits memory_budget_bytes, else streams it.
    data_path: str = "auto"
    # None: half of the available RAM (CPU) or of the free GPU memory (CUDA).
    memory_budget_bytes: int | None = None
    # Streaming shuffles clips within windows of this many chunks (the shuffle buffer); in memory the whole split
    # is shuffled at once, unless window_in_memory asks for the streaming order there too: then a split trains to
    # the same weights whether it fits memory or not.
    shuffle_window_chunks: int | None = 8
    window_in_memory: bool = False
    prefetch_windows: int = 2
    device: str = "auto"
    # bfloat16 autocast on CUDA; the CPU always trains in float32 so that results are reproducible.
    amp: bool = True
    # Validation passes for the curves every this many epochs; the last epoch is always evaluated.
    eval_every: int = 1

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a config mapping, naming any unknown key."""
        return settings_from_dict(cls, values, "train")

    def validate(self) -> None:
        """Raise ConfigError for values that cannot train."""
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"train.epochs ({self.epochs}) and train.batch_size ({self.batch_size}) must be >= 1")
        if self.data_path not in DATA_PATHS:
            raise ConfigError(f"train.data_path {self.data_path!r}: choose one of {', '.join(DATA_PATHS)}")
        if self.shuffle_window_chunks is not None and self.shuffle_window_chunks < 1:
            raise ConfigError("train.shuffle_window_chunks must be >= 1 (or null: shuffle the whole split at once)")
        if self.warmup_epochs < 0 or self.eval_every < 1 or self.prefetch_windows < 1:
            raise ConfigError("train.warmup_epochs must be >= 0, train.eval_every and train.prefetch_windows >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def available_memory_bytes(device: torch.device) -> int:
    """Free GPU memory on CUDA, available RAM (MemAvailable) on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# -- batch order --------------------------------------------------------------------------------------------
def shuffle_windows(
    chunk_of: np.ndarray, seed: int, epoch: int, window_chunks: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch's order as windows of (chunk ids ascending, split positions in serving order).

    Chunks are shuffled, grouped `window_chunks` at a time, and clips are shuffled within each window; a pure
    function of the chunk layout and (seed, epoch), so the in-memory and streaming paths serve the same order.
    chunk_of: [n] chunk id of each split position.
    """
    rng = np.random.default_rng([seed, epoch])
    index = ChunkIndex(chunk_of)
    chunks = rng.permutation(index.ids)
    width = max(1, len(chunks) if not window_chunks else min(window_chunks, len(chunks)))
    # Every window's chunk ids sorted, and all their positions gathered at once; only the shuffles loop.
    groups = [np.sort(chunks[start : start + width]) for start in range(0, len(chunks), width)]
    ordered = np.concatenate(groups) if groups else chunks
    positions = index.positions(ordered)
    sizes = np.add.reduceat(index.sizes(ordered), np.arange(0, len(ordered), width)) if groups else []
    parts = np.split(positions, np.cumsum(sizes)[:-1]) if groups else []
    return [(ids, rng.permutation(part)) for ids, part in zip(groups, parts, strict=True)]


def sequential_windows(chunk_of: np.ndarray, window_chunks: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Windows in storage order with positions ascending (evaluation)."""
    index = ChunkIndex(chunk_of)
    chunks = index.ids
    return [
        (chunks[i : i + window_chunks], index.positions(chunks[i : i + window_chunks]))
        for i in range(0, len(chunks), window_chunks)
    ]


class ChunkIndex:
    """Where each chunk's clips sit in a split: one stable sort, then any set of chunks in O(its clips).

    chunk_of: [n] chunk id of each split position (ascending for a store split, which makes the sort linear).
    """

    def __init__(self, chunk_of: np.ndarray):
        self._order = np.argsort(chunk_of, kind="stable")
        ordered = chunk_of[self._order]
        self.ids, self._starts = np.unique(ordered, return_index=True)
        self._stops = np.append(self._starts[1:], len(ordered))

    def sizes(self, ids: np.ndarray) -> np.ndarray:
        """Clips of each chunk in `ids`."""
        at = np.searchsorted(self.ids, ids)
        return self._stops[at] - self._starts[at]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Split positions of the clips of chunks `ids` (ascending ids), ascending within each chunk."""
        at = np.searchsorted(self.ids, ids)
        starts, lengths = self._starts[at], self._stops[at] - self._starts[at]
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return self._order[np.repeat(starts, lengths) + offsets]


# -- data -------------------------------------------------------------------------------------------------
@dataclass
class RawBatch:
    """Clips as stored: tokens [B, T, D] and prefix [B, P, D] in the stored dtype, mask [B, T], targets [B, C]."""

    tokens: torch.Tensor
    mask: torch.Tensor
    prefix: torch.Tensor | None
    targets: torch.Tensor
    positions: np.ndarray


def _cat(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(list(parts))


class SplitData:
    """The clips of one split at one layer, held in memory or streamed whole chunk by whole chunk.

    window_chunks: training shuffles clips within windows of this many shuffled chunks (the streaming shuffle
    buffer); None shuffles the whole split at once (the in-memory default).
    """

    def __init__(
        self,
        store: TokenStore,
        split: str | Sequence[str],
        layer: int | None = None,
        in_memory: bool = True,
        device: torch.device | str = "cpu",
        window_chunks: int | None = None,
        prefetch_windows: int = 2,
    ):
        self.store = store
        # Several splits read as one, in store order (a role given as a list, e.g. the training folds).
        self.splits = (split,) if isinstance(split, str) else tuple(split)
        self.split = "+".join(self.splits)
        self.layer = store.resolve_layer(layer)
        self.indices = store.split_indices(self.splits)
        if len(self.indices) == 0:
            raise StoreError(
                f"{store.path}: split {self.split!r} has no clips; choose another split name in the config"
            )
        self.device = torch.device(device)
        self.path = IN_MEMORY if in_memory else STREAMING
        self.window_chunks = window_chunks
        self.prefetch_windows = prefetch_windows
        self.chunk_of = self.indices // store.chunk_clips  # [n] chunk id of each split position
        self.labels = store.labels[self.indices]  # [n, C] uint8
        # Windows of longer recordings: which recording each row is, for recording-level metrics.
        self.recordings = store.recording_ids[self.indices] if store.is_windowed else None
        self._targets = torch.from_numpy(self.labels.astype(np.float32))
        self._memory: RawBatch | None = self._read_windows_all() if in_memory else None

    @property
    def n_clips(self) -> int:
        return len(self.indices)

    @property
    def nbytes(self) -> int:
        """Bytes this split's tokens (and prefix) take in the stored dtype."""
        return split_nbytes(self.store, self.n_clips)

    def _read_chunk(self, chunk: int) -> RawBatch:
        """The split's clips inside one chunk, read as a whole chunk for sequential I/O."""
        start = chunk * self.store.chunk_clips
        stop = min(self.store.n_clips, start + self.store.chunk_clips)
        positions = np.flatnonzero(self.chunk_of == chunk)
        rows = torch.from_numpy(self.indices[positions] - start)
        tokens = self.store.read_tokens(self.layer, start, stop)
        prefix = self.store.read_prefix(self.layer, start, stop)
        return RawBatch(
            tokens=tokens[rows] if len(rows) < stop - start else tokens,
            mask=self.store.token_mask(start, stop)[rows],
            prefix=None if prefix is None else prefix[rows],
            targets=self._targets[positions],
            positions=positions,
        )

    def _read_window(self, chunk_ids: np.ndarray) -> RawBatch:
        parts = [self._read_chunk(int(c)) for c in chunk_ids]
        window = RawBatch(
            tokens=_cat([p.tokens for p in parts]),
            mask=_cat([p.mask for p in parts]),
            prefix=_cat([p.prefix for p in parts]),
            targets=_cat([p.targets for p in parts]),
            positions=np.concatenate([p.positions for p in parts]),
        )
        if self.device.type == "cuda":
            window.tokens = window.tokens.pin_memory()
        return window

    def _read_windows_all(self) -> RawBatch:
        # Fill one preallocated tensor chunk by chunk: peak memory stays at the split's size plus one chunk.
        n, store = self.n_clips, self.store
        tokens = torch.empty((n, store.num_tokens, store.embed_dim), dtype=layout.torch_dtype(store.dtype))
        prefix = torch.empty((n, store.num_prefix, store.embed_dim), dtype=tokens.dtype) if store.num_prefix else None
        mask = torch.empty((n, store.num_tokens), dtype=torch.bool)
        for chunk in np.unique(self.chunk_of):
            part = self._read_chunk(int(chunk))
            rows = torch.from_numpy(part.positions)
            tokens[rows] = part.tokens
            mask[rows] = part.mask
            if prefix is not None:
                prefix[rows] = part.prefix
        return RawBatch(
            tokens=tokens.to(self.device),
            mask=mask.to(self.device),
            prefix=None if prefix is None else prefix.to(self.device),
            targets=self._targets.to(self.device),
            positions=np.arange(n),
        )

    def _to_device(self, batch: RawBatch) -> RawBatch:
        if self.device.type == "cpu":
            return batch
        move = {"device": self.device, "non_blocking": True}
        return RawBatch(
            tokens=batch.tokens.to(**move),
            mask=batch.mask.to(**move),
            prefix=None if batch.prefix is None else batch.prefix.to(**move),
            targets=batch.targets.to(**move),
            positions=batch.positions,
        )

    def _select(self, source: RawBatch, rows: torch.Tensor, positions: np.ndarray) -> RawBatch:
        rows = rows.to(source.tokens.device)
        return RawBatch(
            tokens=source.tokens[rows],
            mask=source.mask[rows],
            prefix=None if source.prefix is None else source.prefix[rows],
            targets=source.targets[rows],
            positions=positions,
        )

    def batches(self, batch_size: int, seed: int | None = None, epoch: int = 0) -> Iterator[RawBatch]:
        """One epoch's batches in the shuffled order of (seed, epoch), or in storage order when seed is None."""
        for _, batch in self.epoch_batches(batch_size, seed, [epoch]):
            yield batch

    def epoch_batches(
        self, batch_size: int, seed: int | None, epochs: Sequence[int]
    ) -> Iterator[tuple[int, RawBatch]]:
        """(epoch, batch) over several epochs; streamed reads run ahead across epoch ends (and validation passes).

        The order depends only on the chunk layout, window_chunks and (seed, epoch), never on the path: an in-memory
        split and a streamed one with the same window_chunks serve the same batches.
        """

        def plan() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
            for epoch in epochs:
                if seed is None:
                    windows = sequential_windows(self.chunk_of, self.window_chunks or 8)
                else:
                    windows = shuffle_windows(self.chunk_of, seed, epoch, self.window_chunks)
                for chunk_ids, order in windows:
                    yield epoch, chunk_ids, order

        if self._memory is None:
            yield from self._stream(plan(), batch_size)
            return
        for epoch in epochs:
            order = np.concatenate([positions for e, _, positions in plan() if e == epoch])
            for start in range(0, len(order), batch_size):
                positions = order[start : start + batch_size]
                yield epoch, self._select(self._memory, torch.from_numpy(positions), positions)

    def _stream(
        self, windows: Iterator[tuple[int, np.ndarray, np.ndarray]], batch_size: int
    ) -> Iterator[tuple[int, RawBatch]]:
        carry: RawBatch | None = None
        current = None
        for epoch, window, order in _prefetched(self._read_window, windows, self.prefetch_windows):
            if carry is not None and epoch != current:
                yield current, self._to_device(carry)  # an epoch's last, short batch never mixes with the next
                carry = None
            current = epoch
            # window.positions ascend; map the served order onto rows of the window.
            rows = torch.from_numpy(np.searchsorted(window.positions, order))
            served = self._select(window, rows, order)
            if carry is not None:
                served = RawBatch(
                    tokens=torch.cat([carry.tokens, served.tokens]),
                    mask=torch.cat([carry.mask, served.mask]),
                    prefix=_cat([carry.prefix, served.prefix]) if carry.prefix is not None else None,
                    targets=torch.cat([carry.targets, served.targets]),
                    positions=np.concatenate([carry.positions, served.positions]),
                )
            n_full = len(served.positions) // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                yield epoch, self._to_device(_slice(served, start, start + batch_size))
            carry = _slice(served, n_full, len(served.positions)) if n_full < len(served.positions) else None
        if carry is not None:
            yield current, self._to_device(carry)


def _slice(batch: RawBatch, start: int, stop: int) -> RawBatch:
    return RawBatch(
        tokens=batch.tokens[start:stop],
        mask=batch.mask[start:stop],
        prefix=None if batch.prefix is None else batch.prefix[start:stop],
        targets=batch.targets[start:stop],
        positions=batch.positions[start:stop],
    )


def _prefetched(
    read, windows: Iterator[tuple[int, np.ndarray, np.ndarray]], depth: int
) -> Iterator[tuple[int, RawBatch, np.ndarray]]:
    """Read (epoch, chunk ids, order) windows in a background thread, `depth` ahead of the consumer, in order."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        failure = None
        try:
            for epoch, chunk_ids, order in windows:
                if not put((epoch, read(chunk_ids), order)):
                    return
        except Exception as error:  # noqa: BLE001 - any read failure must reach the consumer, which re-raises it
            failure = error
        finally:
            put(failure)  # None marks the end

    worker = threading.Thread(target=produce, name="embedcache-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def split_nbytes(store: TokenStore, n_clips: int) -> int:
    """Bytes of n clips' tokens and prefix in the stored dtype."""
    per_clip = store.token_nbytes() // max(1, store.n_clips)
    per_clip += per_clip * store.num_prefix // max(1, store.num_tokens)
    return int(n_clips * per_clip)


def open_splits(
    requests: Sequence[tuple[TokenStore, str | Sequence[str]]], layer: int | None, config: TrainConfig
) -> list[SplitData]:
    """Open splits in order, each in memory while the shared memory budget lasts, streamed after that."""
    device = resolve_device(config.device, option="train.device")
    budget = config.memory_budget_bytes
    if budget is None:
        budget = available_memory_bytes(device) // 2
    opened = []
    for store, split in requests:
        if config.data_path == "auto":
            in_memory = split_nbytes(store, len(store.split_indices(split))) <= budget
        else:
            in_memory = config.data_path == IN_MEMORY
        # In memory the whole split is shuffled at once unless the config asks for windows everywhere.
        window = config.shuffle_window_chunks if not in_memory or config.window_in_memory else None
        data = SplitData(
            store, split, layer, in_memory=in_memory, device=device,
            window_chunks=window or (None if in_memory else 8), prefetch_windows=config.prefetch_windows,
        )
        if in_memory:
            budget -= data.nbytes
        opened.append(data)
    return opened


# -- training ---------------------------------------------------------------------------------------------
def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor: linear warm-up from 1/warmup to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def selection_metric(multilabel: bool) -> str:
    """The validation metric a configuration is chosen by."""
    return "map" if multilabel else "accuracy"


def split_metrics(
    targets: np.ndarray, scores: np.ndarray, multilabel: bool, recordings: np.ndarray | None = None
) -> dict:
    """Metrics of full-split scores [N, C] against uint8 targets [N, C].

    With `recordings` (rows that are windows of longer recordings), the same metrics per recording too, prefixed
    `recording_`: window scores max-pooled per recording, targets united.
    """
    compute = metrics.multilabel_metrics if multilabel else metrics.multiclass_metrics
    result = compute(targets, scores)
    if recordings is not None:
        _, pooled_targets, pooled_scores = metrics.pool_by_recording(recordings, targets, scores)
        # A recording whose windows disagree on a single label is multi-label: score it as such.
        pooled = metrics.multilabel_metrics if multilabel or (pooled_targets.sum(1) != 1).any() else compute
        result.update({f"recording_{key}": value for key, value in pooled(pooled_targets, pooled_scores).items()})
    return result


class HeadBank:
    """K heads trained together on every batch read once; each ends as if trained alone.

    Learned state: heads_ (modules), curves_ (rows per head and epoch), valid_metrics_ (final, per head),
    data_paths_ (which path ran per split), loss_kind_, multilabel_.
    """

    def __init__(self, specs: Sequence[HeadSpec], config: TrainConfig | None = None, multilabel: bool | None = None):
        self.specs = list(specs)
        self.config = config or TrainConfig()
        self.multilabel = multilabel

    def _build(self, train: SplitData) -> None:
        store = train.store
        self.multilabel_ = store.is_multilabel if self.multilabel is None else self.multilabel
        self.loss_kind_ = self.config.loss or losses.default_loss_kind(self.multilabel_)
        self.loss_fn_ = losses.create_loss(self.loss_kind_, **self.config.loss_options)
        for spec in self.specs:
            spec.validate()
        self.heads_ = []
        for spec in self.specs:
            head = head_registry.create(
                spec.kind, num_classes=len(store.label_names), embed_dim=store.embed_dim,
                has_prefix=store.num_prefix > 0, generator=torch.Generator().manual_seed(spec.seed), **spec.options,
            )
            self.heads_.append(head.to(train.device))

    def _init_rng(self, device: torch.device) -> None:
        # Heads with dropout draw from the global RNG: give each its own RNG state so neighbours cannot shift it.
        self._rng_states_: list[tuple | None] = []
        devices = [device] if device.type == "cuda" else []
        for spec, head in zip(self.specs, self.heads_):
            if not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in head.modules()):
                self._rng_states_.append(None)
                continue
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(np.random.SeedSequence([spec.seed, 1]).generate_state(1)[0]))
                cuda_state = torch.cuda.get_rng_state(device) if devices else None
                self._rng_states_.append((torch.get_rng_state(), cuda_state))

    @contextlib.contextmanager
    def _head_rng(self, k: int, device: torch.device):
        state = self._rng_states_[k]
        if state is None:
            yield
            return
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(state[0])
            if devices:
                torch.cuda.set_rng_state(state[1], device)
            yield
            self._rng_states_[k] = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if devices else None)

    def _loss_targets(self, targets: torch.Tensor) -> torch.Tensor:
        # Cross-entropy takes class indices; the multi-label losses take the multi-hot matrix.
        return targets.argmax(dim=1) if self.loss_kind_ == "ce" else targets

    def _autocast(self, device: torch.device):
        if device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fit(
        self, train: SplitData, valid: SplitData | None = None,
        on_validation: Callable[[int, dict[int, dict]], Iterable[int]] | None = None,
    ) -> HeadBank:
        """Train every head for config.epochs over `train`, evaluating on `valid` for the curves.

        on_validation(epoch, {head index: metrics}) runs after each validation pass and returns heads to stop (a
        sweep's pruner): a stopped head trains no further and keeps the metrics of its last pass (stopped_).
        """
        config = self.config
        self._build(train)
        device = train.device
        self._init_rng(device)
        steps_per_epoch = math.ceil(train.n_clips / config.batch_size)
        total = config.epochs * steps_per_epoch
        warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
        optimisers, schedulers = [], []
        for spec, head in zip(self.specs, self.heads_):
            optimiser = torch.optim.AdamW(head.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
            optimisers.append(optimiser)
            schedulers.append(
                torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, warmup, total))
            )
        self.data_paths_ = {train.split: train.path}
        if valid is not None:
            self.data_paths_[valid.split] = valid.path
        self.curves_: list[dict] = []
        self.valid_metrics_: list[dict] = [{} for _ in self.heads_]
        self.stopped_: set[int] = set()
        metric = selection_metric(self.multilabel_)
        batches = train.epoch_batches(config.batch_size, config.data_seed, range(config.epochs))
        for epoch, epoch_batches in itertools.groupby(batches, key=lambda item: item[0]):
            if len(self.stopped_) == len(self.heads_):
                break
            active = [k for k in range(len(self.heads_)) if k not in self.stopped_]
            started = time.perf_counter()
            for head in self.heads_:
                head.train()
            loss_sums = torch.zeros(len(self.heads_), dtype=torch.float64, device=device)
            for _, raw in epoch_batches:
                batch = _token_batch(raw)
                targets = self._loss_targets(raw.targets)
                for k in active:
                    head = self.heads_[k]
                    with self._head_rng(k, device), self._autocast(device):
                        logits = head(batch)
                    loss = self.loss_fn_(logits.float(), targets) + head.auxiliary_loss()
                    optimisers[k].zero_grad(set_to_none=True)
                    loss.backward()
                    optimisers[k].step()
                    schedulers[k].step()
                    loss_sums[k] += loss.detach().double() * len(raw.positions)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # honest epoch times: wait for the queued kernels
            train_seconds = time.perf_counter() - started
            last = epoch == config.epochs - 1
            evaluate = valid is not None and (last or (epoch + 1) % config.eval_every == 0)
            if evaluate:
                scores = self.predict(valid, which=active)
                results = {k: split_metrics(valid.labels, s, self.multilabel_, valid.recordings)
                           for k, s in zip(active, scores)}
                for k, result in results.items():
                    self.valid_metrics_[k] = result
                if on_validation is not None:
                    self.stopped_ |= set(on_validation(epoch + 1, results))
            losses_per_head = (loss_sums / train.n_clips).tolist()
            for k in active:
                spec = self.specs[k]
                self.curves_.append({
                    "head": spec.label, "kind": spec.kind, "lr": spec.lr, "weight_decay": spec.weight_decay,
                    "seed": spec.seed, "epoch": epoch + 1, "train_loss": losses_per_head[k],
                    f"valid_{metric}": results[k][metric] if evaluate else "",
                    "lr_now": optimisers[k].param_groups[0]["lr"], "train_seconds": round(train_seconds, 4),
                })
        return self

    @torch.no_grad()
    def predict(self, data: SplitData, which: Sequence[int] | None = None) -> list[np.ndarray]:
        """Scores [N, C] per selected head over the whole split, in split order (sigmoid or softmax)."""
        chosen = list(range(len(self.heads_))) if which is None else list(which)
        for k in chosen:
            self.heads_[k].eval()
        outputs: list[list[torch.Tensor]] = [[] for _ in chosen]
        for raw in data.batches(self.config.batch_size):
            batch = _token_batch(raw)
            for slot, k in enumerate(chosen):
                with self._autocast(data.device):
                    logits = self.heads_[k](batch).float()
                probs = torch.sigmoid(logits) if self.multilabel_ else torch.softmax(logits, dim=1)
                outputs[slot].append(probs.cpu())
        return [torch.cat(parts).numpy() for parts in outputs]


def _token_batch(raw: RawBatch) -> head_registry.TokenBatch:
    # The store keeps float16/bfloat16 to halve memory; heads compute in float32 (autocast narrows on CUDA).
    return head_registry.TokenBatch(
        tokens=raw.tokens.float(), mask=raw.mask, prefix=None if raw.prefix is None else raw.prefix.float()
    )
