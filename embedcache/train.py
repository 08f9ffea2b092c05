"""Probe training on cached tokens: a bank of K heads trained together, every batch read once.

Data flows store -> SplitData (embedcache.loader: in memory or streamed by whole chunks) -> one TokenBatch per batch
-> every head. Over several layers a batch holds every chosen layer once: a head on layer L reads that layer's
TokenBatch (HeadSpec.layer), a layer-mixing head (layermix) reads them all, stacked (heads.layermix.LayerStack).
Each head has its own generator, AdamW and cosine schedule, and the batch order depends only on the data seed,
so a head trained in a bank of K ends bit-identical to the same head trained alone (on the CPU).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from embedcache import heads as head_registry
from embedcache import losses, metrics, sed
from embedcache.errors import ConfigError
from embedcache.heads.layermix import LayerMixHead, LayerStack
from embedcache.loader import DATA_PATHS, RawBatch, SplitData
from embedcache.settings import settings_from_dict


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


def mixes_layers(kind: str) -> bool:
    """Whether a head kind reads every chosen layer at once (it takes a `layers` option: layermix)."""
    return "layers" in head_registry.head_options(kind)


@dataclass
class HeadSpec:
    """One member of a bank: a head kind with its options, its optimiser settings and its init seed.

    layer: the stored layer the head reads; None: the data's only layer. A layer-mixing kind (layermix) leaves it
    None and reads every layer of the data (or those its `layers` option names).
    """

    kind: str
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    options: dict = field(default_factory=dict)
    layer: int | None = None

    def validate(self) -> None:
        """Raise ConfigError for settings the optimiser would reject with a traceback (negative or NaN lr, ...)."""
        if self.kind not in head_registry.HEAD_KINDS:
            raise ConfigError(f"head {self.kind!r}: choose one of {', '.join(head_registry.HEAD_KINDS)}")
        checked_lr(self.lr, f"head {self.kind}: lr")
        checked_weight_decay(self.weight_decay, f"head {self.kind}: weight_decay")
        if not isinstance(self.options, dict):
            raise ConfigError(f"head {self.kind}: options {self.options!r} is not a mapping")
        if self.layer is not None and mixes_layers(self.kind):
            raise ConfigError(f"head {self.kind}: it mixes layers, so it takes no single layer ({self.layer}); name "
                              "the layers it mixes in its `layers` option")

    @property
    def label(self) -> str:
        extra = "".join(f" {key}={value}" for key, value in sorted(self.options.items()))
        extra += "" if self.layer is None else f" layer={self.layer}"
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

    With `recordings` (rows that are windows of longer recordings), the same metrics per recording too, targets
    united: prefixed `recording_` with window scores max-pooled per recording, `recording_mean_` with them averaged.
    """
    compute = metrics.multilabel_metrics if multilabel else metrics.multiclass_metrics
    result = compute(targets, scores)
    if recordings is not None:
        for reduce, prefix in (("max", "recording_"), ("mean", "recording_mean_")):
            _, pooled_targets, pooled_scores = metrics.pool_by_recording(recordings, targets, scores, reduce)
            # A recording whose windows disagree on a single label is multi-label: score it as such.
            pooled = metrics.multilabel_metrics if multilabel or (pooled_targets.sum(1) != 1).any() else compute
            result.update({f"{prefix}{key}": value for key, value in pooled(pooled_targets, pooled_scores).items()})
    return result


class HeadBank:
    """K heads trained together on every batch read once; each ends as if trained alone.

    Learned state: heads_ (modules), curves_ (rows per head and epoch), valid_metrics_ (final, per head),
    data_paths_ (which path ran per split), loss_kind_, multilabel_.
    Over several layers each head reads the layer its spec names, a layer-mixing head all of them (see `head_input`).
    frames (sound-event detection): every head must score time steps; a head that trains on frames (frame_linear)
    learns from each step's strong labels (`split_frames`), the others from clip labels (weak), and validation adds
    frame-level metrics (frame_map) for all of them.
    """

    def __init__(self, specs: Sequence[HeadSpec], config: TrainConfig | None = None, multilabel: bool | None = None,
                 frames: bool = False):
        self.specs = list(specs)
        self.config = config or TrainConfig()
        self.multilabel = multilabel
        self.frames = frames

    def _build(self, train: SplitData) -> None:
        store = train.store
        self.multilabel_ = store.is_multilabel if self.multilabel is None else self.multilabel
        self.loss_kind_ = self.config.loss or losses.default_loss_kind(self.multilabel_)
        self.loss_fn_ = losses.create_loss(self.loss_kind_, **self.config.loss_options)
        for spec in self.specs:
            spec.validate()
        self.heads_ = []
        for spec in self.specs:
            options = dict(spec.options)
            if mixes_layers(spec.kind) and options.get("layers") is None:
                options["layers"] = list(train.layers)  # every layer of the data, recorded in the head's config
            head = head_registry.create(
                spec.kind, num_classes=len(store.label_names), embed_dim=store.embed_dim,
                has_prefix=store.num_prefix > 0, generator=torch.Generator().manual_seed(spec.seed), **options,
            )
            self.heads_.append(head.to(train.device))
        self.routes_ = head_routes(self.heads_, [spec.layer for spec in self.specs], train.layers)
        if self.frames:
            unable = sorted({spec.kind for spec, head in zip(self.specs, self.heads_) if not head.gives_frames})
            if unable:
                raise ConfigError(f"sound-event detection: head(s) {', '.join(unable)} give no frame scores; use "
                                  "frame_linear or a prototype head (proto, protofloat, protobin)")

    @staticmethod
    def _frame_targets(raw: RawBatch, frames: tuple, n_freq: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets [S, C] of the batch's strong-labelled real time steps, those steps [B, n_time] bool): the same for
        every frame head, so computed once per batch."""
        targets, scored = frames
        rows = torch.from_numpy(raw.positions).to(targets.device)
        steps = scored[rows] & raw.mask.view(len(rows), -1, n_freq).any(dim=2)
        return targets[rows][steps], steps

    def _frame_loss(self, logits: torch.Tensor, step_targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """A frame head's loss on the strong-labelled real time steps of a batch (logits [B, n_time, C])."""
        targets, steps = step_targets
        if not bool(steps.any()):
            return logits.sum() * 0.0  # no strong label in this batch: no gradient, no NaN
        return self.loss_fn_(logits[steps].float(), targets)

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
        on_epoch: Callable[[int, HeadBank], None] | None = None,
    ) -> HeadBank:
        """Train every head for config.epochs over `train`, evaluating on `valid` for the curves.

        One AdamW over K parameter groups (each head its own lr and weight decay) and one backward of the summed
        losses per batch: a head's gradient comes from its own loss only, so each head still ends bit-identical to
        the same head trained alone. A head whose loss or validation scores stop being finite is marked in
        `diverged_` (its metrics NaN, `"diverged": True`) and trains no further; the others go on.
        on_validation(epoch, {head index: metrics}) runs after each validation pass and returns heads to stop (a
        sweep's pruner): a stopped head trains no further and keeps the metrics of its last pass (stopped_).
        on_epoch(epoch, bank) runs after every epoch (progress display).
        A head with no optimiser parameters (uses_optimiser False: knn, logreg) is fitted once before the loop by its
        `fit_data` and scored on `valid` then; it takes no part in the optimiser or the summed loss and has no curves.
        """
        config = self.config
        self._build(train)
        device = train.device
        self._init_rng(device)
        steps_per_epoch = math.ceil(train.n_clips / config.batch_size)
        total = config.epochs * steps_per_epoch
        warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
        groups = [{"params": list(head.parameters()), "lr": spec.lr, "weight_decay": spec.weight_decay}
                  for spec, head in zip(self.specs, self.heads_)]
        optimiser = torch.optim.AdamW(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, warmup, total))
        self.data_paths_ = {train.split: train.path}
        if valid is not None:
            self.data_paths_[valid.split] = valid.path
        self.curves_: list[dict] = []
        self.valid_metrics_: list[dict] = [{} for _ in self.heads_]
        self.stopped_: set[int] = set()
        self.diverged_: set[int] = set()
        metric = selection_metric(self.multilabel_)
        frames, n_freq = None, train.store.grid[1]
        if self.frames:
            targets, scored = split_frames(train)
            frames = (torch.from_numpy(targets.astype(np.float32)).to(device), torch.from_numpy(scored).to(device))
        # Heads with no optimiser parameters (knn, logreg) are fitted once here and take no part in the loop.
        trained = [k for k, head in enumerate(self.heads_) if head.uses_optimiser]
        self._fit_data([k for k in range(len(self.heads_)) if k not in trained], train, valid)
        batches = train.epoch_batches(config.batch_size, config.data_seed, range(config.epochs))
        for epoch, epoch_batches in itertools.groupby(batches, key=lambda item: item[0]):
            active = [k for k in trained if k not in self.stopped_ | self.diverged_]
            if not active:
                break
            frame_heads = {k for k in active if frames is not None and self.heads_[k].trains_on_frames}
            started = time.perf_counter()
            for head in self.heads_:
                head.train()
            loss_sums = torch.zeros(len(self.heads_), dtype=torch.float64, device=device)
            for _, raw in epoch_batches:
                batch = _token_batch(raw)
                targets = self._loss_targets(raw.targets)
                step_targets = self._frame_targets(raw, frames, n_freq) if frame_heads else None
                head_losses = []
                for k in active:
                    on_frames = k in frame_heads
                    with self._head_rng(k, device), self._autocast(device):
                        head_in = head_input(batch, self.routes_[k])
                        logits = self.heads_[k].frame_logits(head_in, n_freq) if on_frames else self.heads_[k](head_in)
                    loss = self._frame_loss(logits, step_targets) if on_frames else self.loss_fn_(logits.float(),
                                                                                                  targets)
                    head_losses.append(loss + self.heads_[k].auxiliary_loss())
                losses = torch.stack(head_losses)
                optimiser.zero_grad(set_to_none=True)
                losses.sum().backward()
                optimiser.step()
                scheduler.step()
                loss_sums[active] += losses.detach().double() * len(raw.positions)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # honest epoch times: wait for the queued kernels
            train_seconds = time.perf_counter() - started
            losses_per_head = (loss_sums / train.n_clips).tolist()
            self._mark_diverged([k for k in active if not math.isfinite(losses_per_head[k])], epoch + 1, "loss")
            last = epoch == config.epochs - 1
            evaluate = valid is not None and (last or (epoch + 1) % config.eval_every == 0)
            results: dict[int, dict] = {}
            if evaluate:
                alive = [k for k in active if k not in self.diverged_]
                scores = self.predict(valid, which=alive) if alive else []
                finite = {k: s for k, s in zip(alive, scores) if np.isfinite(s).all()}
                self._mark_diverged([k for k in alive if k not in finite], epoch + 1, "validation scores")
                results = {k: split_metrics(valid.labels, s, self.multilabel_, valid.recordings)
                           for k, s in finite.items()}
                if self.frames:
                    self._add_frame_metrics(results, valid, epoch + 1)
                for k, result in results.items():
                    self.valid_metrics_[k] = result
                if on_validation is not None:
                    self.stopped_ |= set(on_validation(epoch + 1, results)) - self.diverged_
            for k in active:
                spec = self.specs[k]
                self.curves_.append({
                    "head": spec.label, "kind": spec.kind, "lr": spec.lr, "weight_decay": spec.weight_decay,
                    "seed": spec.seed, "epoch": epoch + 1, "train_loss": losses_per_head[k],
                    f"valid_{metric}": results[k][metric] if k in results else "",
                    **({"valid_frame_map": results[k]["frame_map"] if k in results else ""} if self.frames else {}),
                    "lr_now": optimiser.param_groups[k]["lr"], "train_seconds": round(train_seconds, 4),
                })
            if on_epoch is not None:
                on_epoch(epoch + 1, self)
        return self

    def _add_frame_metrics(self, results: dict[int, dict], valid: SplitData, epoch: int) -> None:
        """Frame-level metrics (sed.frame_metrics) of every head in `results` on `valid`, merged into its metrics; a
        head whose frame scores are not finite is marked diverged and dropped from `results`."""
        targets, scored = split_frames(valid)
        which = list(results)
        for k, scores in zip(which, self.predict_frames(valid, which=which)):
            if not np.isfinite(scores).all():
                self._mark_diverged([k], epoch, "validation frame scores")
                results.pop(k)
                continue
            results[k].update(sed.frame_metrics(targets, scores, scored))

    def _fit_data(self, which: Sequence[int], train: SplitData, valid: SplitData | None) -> None:
        """Fit the heads that take no optimiser (`which`) from whole splits, then score them on `valid` as the
        others are scored; heads reading the same input share one pooled pass over each split."""
        inputs: dict = {}

        def labelled(data: SplitData, k: int) -> head_registry.LabelledSplit:
            key = (data.split, self.routes_[k])
            if key not in inputs:
                def batches(route=self.routes_[k]):
                    for raw in data.batches(self.config.batch_size):
                        yield raw.positions, head_input(_token_batch(raw), route)

                inputs[key] = head_registry.LabelledSplit(batches, data.labels, self.multilabel_)
            return inputs[key]

        for k in which:
            self.heads_[k].fit_data(labelled(train, k), None if valid is None else labelled(valid, k))
        if valid is None or not which:
            return
        finite = {k: s for k, s in zip(which, self.predict(valid, which=which)) if np.isfinite(s).all()}
        self._mark_diverged([k for k in which if k not in finite], 0, "validation scores")
        for k, scores in finite.items():
            self.valid_metrics_[k] = split_metrics(valid.labels, scores, self.multilabel_, valid.recordings)

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict]:
        """A fitted bank as (tensors `<head>.<name>`, JSON-able state): what `restore` needs to predict and report."""
        tensors = {f"{k}.{key}": value.detach().cpu().contiguous()
                   for k, head in enumerate(self.heads_) for key, value in head.state_dict().items()}
        state = {
            "specs": [asdict(spec) for spec in self.specs], "config": self.config.to_dict(),
            "head_configs": [head.config for head in self.heads_], "multilabel": self.multilabel_,
            "loss_kind": self.loss_kind_, "valid_metrics": self.valid_metrics_, "curves": self.curves_,
            "data_paths": self.data_paths_, "stopped": sorted(self.stopped_), "diverged": sorted(self.diverged_),
            **({"frames": True} if self.frames else {}),
        }
        return tensors, state

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], state: dict, device: torch.device | str = "cpu") -> HeadBank:
        """The fitted bank a `snapshot` describes (heads rebuilt from their configs, weights loaded)."""
        bank = cls([HeadSpec(**spec) for spec in state["specs"]], TrainConfig.from_dict(state["config"]),
                   multilabel=state["multilabel"], frames=bool(state.get("frames", False)))
        bank.multilabel_, bank.loss_kind_ = state["multilabel"], state["loss_kind"]
        bank.heads_ = []
        for k, config in enumerate(state["head_configs"]):
            head = head_registry.create(**config)
            prefix = f"{k}."
            head.load_state_dict({key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)})
            bank.heads_.append(head.to(device))
        bank.valid_metrics_, bank.curves_ = state["valid_metrics"], state["curves"]
        bank.data_paths_ = state["data_paths"]
        bank.stopped_, bank.diverged_ = set(state["stopped"]), set(state["diverged"])
        return bank

    def _mark_diverged(self, heads: Sequence[int], epoch: int, what: str) -> None:
        """Stop `heads` for good: NaN metrics marked diverged (a configuration that never wins)."""
        metric = selection_metric(self.multilabel_)
        for k in heads:
            self.diverged_.add(k)
            self.valid_metrics_[k] = {metric: math.nan, "diverged": True, "diverged_epoch": epoch,
                                      "diverged_in": what, **({"frame_map": math.nan} if self.frames else {})}

    def predict(self, data: SplitData, which: Sequence[int] | None = None) -> list[np.ndarray]:
        """Scores [N, C] per selected head over the whole split, in split order (sigmoid or softmax)."""
        chosen = list(range(len(self.heads_))) if which is None else list(which)
        return predict_scores([self.heads_[k] for k in chosen], data, self.multilabel_, self.config.batch_size,
                              amp=self.config.amp, layers=[self.specs[k].layer for k in chosen])


    def predict_frames(self, data: SplitData, which: Sequence[int] | None = None) -> list[np.ndarray]:
        """Frame scores [N, n_time, C] (sigmoid) per selected head over the whole split, in split order; heads that
        give frames only (padding steps hold whatever the head says there: mask them with `split_frames`)."""
        chosen = list(range(len(self.heads_))) if which is None else list(which)
        return predict_frame_scores([self.heads_[k] for k in chosen], data, self.config.batch_size,
                                    amp=self.config.amp, layers=[self.specs[k].layer for k in chosen])


_FRAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def split_frames(data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """(targets [N, n_time, C] uint8, scored [N, n_time] bool) of a split: each time step's strong labels, and the
    steps that count (real audio of rows whose strong labels are known); computed once per split."""
    if data not in _FRAMES:
        store = data.store
        targets, strong = store.strong_targets(data.indices)
        steps = store.valid_tokens[data.indices].astype(np.int64) // store.grid[1]
        scored = (np.arange(store.grid[0])[None, :] < steps[:, None]) & strong[:, None]
        _FRAMES[data] = (targets, scored)
    return _FRAMES[data]


@torch.no_grad()
def predict_frame_scores(
    heads: Sequence[torch.nn.Module], data: SplitData, batch_size: int = 128, amp: bool = True,
    layers: Sequence[int | None] | None = None,
) -> list[np.ndarray]:
    """Frame scores [N, n_time, C] (sigmoid of `frame_logits`) of each head over the whole split, in split order."""
    for head in heads:
        head.eval()
    routes = head_routes(heads, layers or [None] * len(heads), data.layers)
    outputs: list[list[torch.Tensor]] = [[] for _ in heads]
    autocast = data.device.type == "cuda" and amp
    n_freq = data.store.grid[1]
    for raw in data.batches(batch_size):
        batch = _token_batch(raw)
        for slot, head in enumerate(heads):
            with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                logits = head.frame_logits(head_input(batch, routes[slot]), n_freq).float()
            outputs[slot].append(torch.sigmoid(logits).cpu())
    return [torch.cat(parts).numpy() for parts in outputs]


@torch.no_grad()
def predict_scores(
    heads: Sequence[torch.nn.Module], data: SplitData, multilabel: bool, batch_size: int = 128, amp: bool = True,
    layers: Sequence[int | None] | None = None,
) -> list[np.ndarray]:
    """Scores [N, C] of each head over the whole split, in split order: sigmoid (multi-label) or softmax.

    layers: per head, the stored layer it reads (None, the default: the data's only layer; see `head_routes`).
    """
    for head in heads:
        head.eval()
    routes = head_routes(heads, layers or [None] * len(heads), data.layers)
    outputs: list[list[torch.Tensor]] = [[] for _ in heads]
    autocast = data.device.type == "cuda" and amp
    for raw in data.batches(batch_size):
        batch = _token_batch(raw)
        for slot, head in enumerate(heads):
            with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                logits = head(head_input(batch, routes[slot])).float()
            probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
            outputs[slot].append(probs.cpu())
    return [torch.cat(parts).numpy() for parts in outputs]


def _token_batch(raw: RawBatch) -> head_registry.TokenBatch | LayerBatches:
    # The store keeps float16/bfloat16/int8 to save memory and transfers; heads compute in float32 (autocast narrows
    # on CUDA), converted here, where the batch already is (int8 is dequantised on the GPU when there is one).
    if raw.tokens.dim() == 4:
        return LayerBatches(raw)
    return head_registry.TokenBatch(tokens=raw.float_tokens(), mask=raw.mask, prefix=raw.float_prefix(),
                                    codes=raw.tokens if raw.quantized else None)


# -- layers: which input each head reads --------------------------------------------------------------------
Route = int | tuple[int, ...]


class LayerBatches:
    """One batch of several layers ([B, L, T, D] as served): layer i's TokenBatch built on first use and shared by
    every head on that layer, and the stacks layer-mixing heads read."""

    def __init__(self, raw: RawBatch):
        self.raw = raw
        self._layers: dict[int, head_registry.TokenBatch] = {}

    def layer(self, index: int) -> head_registry.TokenBatch:
        """The TokenBatch of layer `index` (a position in the data's layers)."""
        if index not in self._layers:
            raw = self.raw
            self._layers[index] = head_registry.TokenBatch(
                tokens=raw.float_tokens(index), mask=raw.mask, prefix=raw.float_prefix(index),
                codes=raw.tokens[:, index] if raw.quantized else None,
            )
        return self._layers[index]


def head_input(batch: head_registry.TokenBatch | LayerBatches, route: Route):
    """What a head reads from a batch: one layer's TokenBatch (route: its position in the data's layers) or, for a
    layer-mixing head (route: a tuple of positions), a LayerStack of those layers."""
    if isinstance(batch, head_registry.TokenBatch):
        return batch if isinstance(route, int) else LayerStack([batch])
    if isinstance(route, int):
        return batch.layer(route)
    return LayerStack([batch.layer(index) for index in route])


def head_routes(heads: Sequence[torch.nn.Module], layers: Sequence[int | None],
                data_layers: Sequence[int]) -> list[Route]:
    """Per head, where its input sits among `data_layers`: the position of its layer (None: the data's only layer),
    or for a layer-mixing head (one with a `layers` list) the positions of the layers it mixes, in its order."""
    data_layers = list(data_layers)
    routes: list[Route] = []
    for head, layer in zip(heads, layers, strict=True):
        if isinstance(head, LayerMixHead):
            wanted = head.layers if head.layers is not None else data_layers[:1] if len(data_layers) == 1 else None
            if wanted is None or head.num_layers != len(wanted):
                raise ConfigError(f"{head.kind} head mixes {head.num_layers} layer(s) but the data holds layers "
                                  f"{data_layers}; give it the layers it names")
            missing = [value for value in wanted if value not in data_layers]
            if missing:
                raise ConfigError(f"{head.kind} head mixes layers {wanted}, but the data holds {data_layers} (no "
                                  f"{missing}); read the store with those layers")
            routes.append(tuple(data_layers.index(value) for value in wanted))
        elif layer is None:
            if len(data_layers) != 1:
                raise ConfigError(f"{getattr(head, 'kind', 'a')} head has no layer, but the data holds layers "
                                  f"{data_layers}; give every head its layer (HeadSpec.layer)")
            routes.append(0)
        elif layer in data_layers:
            routes.append(data_layers.index(layer))
        else:
            raise ConfigError(f"{getattr(head, 'kind', 'a')} head reads layer {layer}, but the data holds layers "
                              f"{data_layers}; open the split with that layer")
    return routes
