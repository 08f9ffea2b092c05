"""The data path of probe training: a split's clips, held in memory or streamed whole chunk by whole chunk, served
as batches in an order that depends only on (data seed, epoch), with a background prefetch of the next window.
A split over several layers serves every chosen layer of each clip in one batch ([B, L, T, D]), read once.

Depends on the store alone; `train` builds batches of tokens for the heads from what this serves.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np
import torch

from embedcache.device import resolve_device
from embedcache.errors import ConfigError, StoreError
from embedcache.store import TokenStore, layout

if TYPE_CHECKING:
    from embedcache.train import TrainConfig

IN_MEMORY = "in-memory"
STREAMING = "streaming"
DATA_PATHS = ("auto", IN_MEMORY, STREAMING)


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


# -- layers -------------------------------------------------------------------------------------------------
LayerChoice = int | Sequence[int] | str | None


def resolve_layers(store: TokenStore, layer: LayerChoice) -> tuple[int, ...]:
    """The stored layers a choice names, ascending: None -> the last, an int (negative: from the encoder's last
    block), a list of them, or "all" -> every stored layer."""
    if layer is None or isinstance(layer, Integral):
        return (store.resolve_layer(None if layer is None else int(layer)),)
    if isinstance(layer, str):
        if layer != "all":
            raise ConfigError(f"layer {layer!r}: give 'all', a stored layer or a list of them")
        return tuple(store.layers)
    resolved = [store.resolve_layer(int(value)) for value in layer]
    if not resolved:
        raise ConfigError("layer: an empty list names no layer; give 'all', a stored layer or a list of them")
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"layer {list(layer)}: names layer(s) {sorted(set(resolved))} more than once (negative "
                          f"values count from the last block: {store.path} stores {store.layers})")
    return tuple(sorted(resolved))


def layer_setting(layers: Sequence[int]) -> int | list[int]:
    """Resolved layers as a probe config records them: one layer as an int, several as a list."""
    return int(layers[0]) if len(layers) == 1 else [int(value) for value in layers]


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
    """Clips as stored: tokens [B, T, D] and prefix [B, P, D] in the stored dtype, mask [B, T], targets [B, C].

    From a split over several layers, tokens are [B, L, T, D] and prefix [B, L, P, D] (L in SplitData.layers order).
    An int8 store's batch holds the int8 codes with their float16 scales [B, (L,) T]: what is read and moved to the
    device is int8, and `float_tokens` dequantises where the batch is (on the GPU when it is there). Its prefix is
    float16, as stored (a format 3 store's int8 prefix is dequantised when read: it is a few tokens per clip).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    prefix: torch.Tensor | None
    targets: torch.Tensor
    positions: np.ndarray
    scales: torch.Tensor | None = None

    @property
    def quantized(self) -> bool:
        """Whether tokens are int8 codes with per-token scales."""
        return self.scales is not None

    def float_tokens(self, layer: int | None = None) -> torch.Tensor:
        """Tokens as float32 (int8: codes x scales), all layers or the one at position `layer` of a stacked batch."""
        return _as_float(self.tokens, self.scales, layer)

    def float_prefix(self, layer: int | None = None) -> torch.Tensor | None:
        """Prefix tokens as float32 (see `float_tokens`), or None."""
        return None if self.prefix is None else _as_float(self.prefix, None, layer)


def _as_float(values: torch.Tensor, scales: torch.Tensor | None, layer: int | None) -> torch.Tensor:
    if layer is not None:
        values, scales = values[:, layer], None if scales is None else scales[:, layer]
    return values.float() if scales is None else layout.dequantize(values, scales)


def _cat(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(list(parts))


def _take(values: torch.Tensor | None, rows) -> torch.Tensor | None:
    return None if values is None else values[rows]


class SplitData:
    """The clips of one split at one layer or several, held in memory or streamed whole chunk by whole chunk.

    layer: a stored layer (None: the last; negative: from the encoder's last block), a list of them or "all"
    (see `resolve_layers`). Several layers are served together, [B, L, T, D], each chunk's layers read at once.
    window_chunks: training shuffles clips within windows of this many shuffled chunks (the streaming shuffle
    buffer); None shuffles the whole split at once (the in-memory default).
    """

    def __init__(
        self,
        store: TokenStore,
        split: str | Sequence[str],
        layer: LayerChoice = None,
        in_memory: bool = True,
        device: torch.device | str = "cpu",
        window_chunks: int | None = None,
        prefetch_windows: int = 2,
    ):
        self.store = store
        # Several splits read as one, in store order (a role given as a list, e.g. the training folds).
        self.splits = (split,) if isinstance(split, str) else tuple(split)
        self.split = "+".join(self.splits)
        self.layers = resolve_layers(store, layer)
        # As a probe config records it: an int for one layer, the list for several.
        self.layer = layer_setting(self.layers)
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
    def stacked(self) -> bool:
        """Whether batches hold several layers ([B, L, T, D]) rather than one ([B, T, D])."""
        return len(self.layers) > 1

    @property
    def nbytes(self) -> int:
        """Bytes this split's tokens (and prefix, and int8 scales) take as stored, every chosen layer."""
        return split_nbytes(self.store, self.n_clips) * len(self.layers)

    def _read_chunk(self, chunk: int) -> RawBatch:
        """The split's clips inside one chunk, read as a whole chunk for sequential I/O."""
        start = chunk * self.store.chunk_clips
        stop = min(self.store.n_clips, start + self.store.chunk_clips)
        positions = np.flatnonzero(self.chunk_of == chunk)
        rows = torch.from_numpy(self.indices[positions] - start)
        tokens, scales, prefix = self._read_layers(start, stop)
        if len(rows) == stop - start:
            rows = slice(None)
        return RawBatch(
            tokens=tokens[rows],
            mask=self.store.token_mask(start, stop)[rows],
            prefix=_take(prefix, rows),
            targets=self._targets[positions],
            positions=positions,
            scales=_take(scales, rows),
        )

    def _read_layers(self, start: int, stop: int) -> tuple:
        """(tokens, scales, prefix) of store rows start:stop as stored: tokens [n, T, D] (several layers:
        [n, L, T, D]); scales [n, (L,) T] for int8 stores, else None; prefix [n, (L,) P, D], None when P = 0."""
        parts = [(*self.store.read_stored(layer, start, stop), self.store.read_prefix(layer, start, stop))
                 for layer in self.layers]
        if not self.stacked:
            return parts[0]
        return tuple(None if part[0] is None else torch.stack(part, dim=1) for part in zip(*parts))

    def _read_window(self, chunk_ids: np.ndarray) -> RawBatch:
        parts = [self._read_chunk(int(c)) for c in chunk_ids]
        window = RawBatch(
            tokens=_cat([p.tokens for p in parts]),
            mask=_cat([p.mask for p in parts]),
            prefix=_cat([p.prefix for p in parts]),
            targets=_cat([p.targets for p in parts]),
            positions=np.concatenate([p.positions for p in parts]),
            scales=_cat([p.scales for p in parts]),
        )
        if self.device.type == "cuda":
            window.tokens = window.tokens.pin_memory()
        return window

    def _read_windows_all(self) -> RawBatch:
        # Fill one preallocated tensor chunk by chunk: peak memory stays at the split's size plus one chunk.
        n, store = self.n_clips, self.store
        per_clip = (len(self.layers),) if self.stacked else ()
        tokens = torch.empty((n, *per_clip, store.num_tokens, store.embed_dim), dtype=layout.torch_dtype(store.dtype))
        prefix = (torch.empty((n, *per_clip, store.num_prefix, store.embed_dim), dtype=store.prefix_read_dtype)
                  if store.num_prefix else None)
        quantized = layout.is_quantized(store.dtype)
        scale_dtype = layout.torch_dtype(layout.SCALE_DTYPE)
        scales = torch.empty((n, *per_clip, store.num_tokens), dtype=scale_dtype) if quantized else None
        mask = torch.empty((n, store.num_tokens), dtype=torch.bool)
        for chunk in np.unique(self.chunk_of):
            part = self._read_chunk(int(chunk))
            rows = torch.from_numpy(part.positions)
            tokens[rows] = part.tokens
            mask[rows] = part.mask
            for whole, piece in ((prefix, part.prefix), (scales, part.scales)):
                if whole is not None:
                    whole[rows] = piece
        return RawBatch(
            tokens=tokens.to(self.device),
            mask=mask.to(self.device),
            prefix=None if prefix is None else prefix.to(self.device),
            targets=self._targets.to(self.device),
            positions=np.arange(n),
            scales=None if scales is None else scales.to(self.device),
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
            scales=None if batch.scales is None else batch.scales.to(**move),
        )

    def _select(self, source: RawBatch, rows: torch.Tensor, positions: np.ndarray) -> RawBatch:
        rows = rows.to(source.tokens.device)
        return RawBatch(
            tokens=source.tokens[rows],
            mask=source.mask[rows],
            prefix=_take(source.prefix, rows),
            targets=source.targets[rows],
            positions=positions,
            scales=_take(source.scales, rows),
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
                    prefix=_cat([carry.prefix, served.prefix]),
                    targets=torch.cat([carry.targets, served.targets]),
                    positions=np.concatenate([carry.positions, served.positions]),
                    scales=_cat([carry.scales, served.scales]),
                )
            n_full = len(served.positions) // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                yield epoch, self._to_device(_slice(served, start, start + batch_size))
            carry = _slice(served, n_full, len(served.positions)) if n_full < len(served.positions) else None
        if carry is not None:
            yield current, self._to_device(carry)


def _slice(batch: RawBatch, start: int, stop: int) -> RawBatch:
    rows = slice(start, stop)
    return RawBatch(
        tokens=batch.tokens[rows],
        mask=batch.mask[rows],
        prefix=_take(batch.prefix, rows),
        targets=batch.targets[rows],
        positions=batch.positions[rows],
        scales=_take(batch.scales, rows),
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
    """Bytes of n clips' tokens and prefix of one layer in the stored dtype (int8: with their scales)."""
    per_clip = (store.token_nbytes() + store.prefix_nbytes()) / max(1, store.n_clips)
    return int(n_clips * per_clip)


def open_splits(
    requests: Sequence[tuple[TokenStore, str | Sequence[str]]], layer: LayerChoice, config: TrainConfig
) -> list[SplitData]:
    """Open splits in order, each in memory while the shared memory budget lasts, streamed after that.

    `layer` is resolved on the first request's store and every split reads those layers (so "all" cannot mean
    other layers in a split_stores entry, which then must hold them too).
    """
    device = resolve_device(config.device, option="train.device")
    budget = config.memory_budget_bytes
    if budget is None:
        budget = available_memory_bytes(device) // 2
    opened = []
    layers = list(resolve_layers(requests[0][0], layer)) if requests and not _is_one(layer) else layer
    for store, split in requests:
        if config.data_path == "auto":
            n_layers = 1 if _is_one(layer) else len(layers)
            in_memory = split_nbytes(store, len(store.split_indices(split))) * n_layers <= budget
        else:
            in_memory = config.data_path == IN_MEMORY
        # In memory the whole split is shuffled at once unless the config asks for windows everywhere.
        window = config.shuffle_window_chunks if not in_memory or config.window_in_memory else None
        data = SplitData(
            store, split, layers, in_memory=in_memory, device=device,
            window_chunks=window or (None if in_memory else 8), prefetch_windows=config.prefetch_windows,
        )
        if in_memory:
            budget -= data.nbytes
        opened.append(data)
    return opened


def _is_one(layer: LayerChoice) -> bool:
    # One layer as today's runs give it: resolved per store (None: each store's last layer).
    return layer is None or isinstance(layer, Integral)
