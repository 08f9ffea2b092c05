"""Hyperparameter search for one probe head: Sobol then TPE trials, pruned by successive halving, K heads per pass.

The paper's protocol: 25 quasi-random (scrambled Sobol) trials, then 25 TPE trials, over lr and weight decay drawn
log-uniformly from the config's grid range, each trial reporting validation mAP per epoch to a successive-halving
pruner; then the top configurations are re-run with 5 seeds and reported mean ± std on test (a `probe` run).

Trials live in an Optuna study (SQLite file beside the run by default, PostgreSQL for many machines). A worker asks
for K trials at a time, trains the K heads as one HeadBank over the cached tokens, and tells each result back; a head
pruned at a rung stops training while its neighbours go on, and a head that diverges fails alone. Every trial uses the
config's seed for init and data order, so a trial's validation metric is exactly what `embedcache probe --config
best.yaml` gives for that seed. Several heads are several studies over one read of the store (`run_sweeps`).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna
import yaml
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from embedcache import heads as head_kinds
from embedcache.errors import ConfigError
from embedcache.probe import (
    absolute_url,
    check_store,
    choose_splits,
    open_data,
    resolve_config,
    run_probe,
    store_record,
)
from embedcache.results import ProbeReport, format_comparison_table
from embedcache.settings import settings_from_dict
from embedcache.store import TokenStore
from embedcache.train import HeadBank, HeadSpec, TrainConfig, selection_metric

PARAMS = ("lr", "weight_decay")
STUDY_ATTR = "embedcache_sweep"
# The store a study was made on ({"fingerprint", "subset"}), a user attribute of the study.
STORE_ATTR = "embedcache_store"
# Settings that change a trial's result: workers joining one study must agree on them.
TRAIN_FIELDS_THAT_MATTER = (
    "epochs", "batch_size", "warmup_epochs", "loss", "loss_options", "shuffle_window_chunks", "window_in_memory",
    "amp", "eval_every",
)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WARNINGS_ATTR = "embedcache_warnings"


@dataclass
class SweepConfig:
    """How a study searches; plain data written beside the run (sweep.yaml) and into the study."""

    trials: int = 50
    # Trials numbered below this take scrambled Sobol points; later ones come from TPE.
    startup_trials: int = 25
    # Heads trained together in one pass over the tokens (K); only speed depends on it.
    batch_trials: int = 8
    # Successive halving: first rung after this many epochs (None: `first_rung`), then x reduction_factor.
    min_epochs: int | None = None
    reduction_factor: int = 3
    # Log-uniform [low, high]; None: the min and max of the head's lr / weight_decay grid in the probe config.
    lr: list[float] | None = None
    weight_decay: list[float] | None = None
    # The best `top_k` completed trials are re-run with `final_seeds` seeds and tested.
    top_k: int = 3
    final_seeds: int = 5

    @classmethod
    def from_dict(cls, values: dict) -> SweepConfig:
        """Build from a mapping, naming any unknown key."""
        return settings_from_dict(cls, values, "sweep")

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot search."""
        if self.trials < 1 or self.batch_trials < 1 or self.startup_trials < 0:
            raise ConfigError(
                f"sweep: trials ({self.trials}) and batch_trials ({self.batch_trials}) must be >= 1, "
                f"startup_trials ({self.startup_trials}) >= 0"
            )
        if self.reduction_factor < 2 or (self.min_epochs is not None and self.min_epochs < 1):
            raise ConfigError("sweep: reduction_factor must be >= 2 and min_epochs >= 1 (or null)")
        if self.top_k < 1 or self.final_seeds < 1:
            raise ConfigError("sweep: top_k and final_seeds must be >= 1")
        for name in PARAMS:
            bounds = getattr(self, name)
            if bounds is not None and (len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]):
                raise ConfigError(f"sweep.{name} {bounds}: give [low, high] with 0 < low <= high (log-uniform)")

    def to_dict(self) -> dict:
        return asdict(self)


# -- the search space and the sampler ----------------------------------------------------------------------
def search_space(head: dict, sweep: SweepConfig) -> dict[str, FloatDistribution]:
    """Log-uniform lr and weight decay: the sweep's bounds, else [min, max] of the head's grid."""
    space = {}
    for name in PARAMS:
        bounds = getattr(sweep, name) or [min(head[name]), max(head[name])]
        low, high = float(bounds[0]), float(bounds[1])
        if low <= 0:
            raise ConfigError(f"{name} range [{low:g}, {high:g}]: a log-uniform range needs low > 0")
        space[name] = FloatDistribution(low, high, log=True)
    if all(d.single() for d in space.values()):
        raise ConfigError(
            f"nothing to search: lr and weight_decay are single values ({space['lr'].low:g}, "
            f"{space['weight_decay'].low:g}); give ranges in the config grid or with --lr LOW,HIGH"
        )
    return space


def collapsed_ranges(head: dict, sweep: SweepConfig, space: dict[str, FloatDistribution]) -> list[str]:
    """One line per range that collapsed to one value: which, where it came from, and how to widen it."""
    notes = []
    for name, dist in space.items():
        if not dist.single():
            continue
        flag, other = ("--lr", "weight decay") if name == "lr" else ("--weight-decay", "lr")
        value = dist.low
        source = f"{flag} {value:g},{value:g}" if getattr(sweep, name) else f"the config's {name} values {head[name]}"
        notes.append(
            f"{name} range collapses to one value ({value:g}, from {source}): only {other} is searched; widen it "
            f"with {flag} LOW,HIGH (e.g. {flag} {value / 10:g},{value * 10:g}) or two values in grid.{name}"
        )
    return notes


def first_rung(epochs: int, trials: int, reduction_factor: int) -> int:
    """The first successive-halving rung (an epoch) for a study that names none: as many rungs as it can fill.

    r rungs leave about trials / reduction_factor**r trials to finish; r is the most that leaves reduction_factor of
    them (reduction_factor**(r + 1) <= trials), and the first rung is ceil(epochs / reduction_factor**r), so rung r
    falls at or after the last epoch. A study of fewer than reduction_factor**2 trials is not pruned before its last
    epoch; a larger one keeps about 1/reduction_factor of its trials at each rung (50 trials, 30 epochs: rungs 4, 12).
    """
    rungs = 0
    while reduction_factor ** (rungs + 2) <= trials:
        rungs += 1
    return max(1, min(epochs, math.ceil(epochs / reduction_factor**rungs)))


def sobol_points(n: int, dims: int, seed: int) -> np.ndarray:
    """The first n points [n, dims] in [0, 1) of a scrambled Sobol sequence (drawn as a power of two, then cut)."""
    from scipy.stats import qmc

    size = 1 << max(0, math.ceil(math.log2(max(1, n))))
    return qmc.Sobol(dims, scramble=True, seed=seed).random(size)[:n]


class SobolThenTPESampler(optuna.samplers.BaseSampler):
    """Trial n < startup takes Sobol point n of the (log) space; later trials are proposed by TPE.

    Points are chosen by trial number, which the study's storage hands out once, so several workers sharing a study
    cover the same quasi-random design with no repeats. TPE is rebuilt per trial with seed (seed, n): proposals
    depend on the study's history and the trial number, not on which worker asks. Its constant liar keeps the K
    trials of one batch (and other workers' running trials) apart.
    """

    def __init__(self, space: dict[str, FloatDistribution], startup_trials: int, seed: int):
        self.space = dict(space)
        self.startup_trials = startup_trials
        self.seed = seed
        self._points = sobol_points(startup_trials, len(space), seed) if startup_trials else np.zeros((0, 0))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {name: dist for name, dist in self.space.items() if not dist.single()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, float]:
        if not search_space:
            return {}
        if trial.number < self.startup_trials:
            return self.sobol_params(trial.number, search_space)
        return self._tpe(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> float:
        return self._tpe(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def sobol_params(self, number: int, search_space: dict[str, BaseDistribution]) -> dict[str, float]:
        """Sobol point `number` mapped onto each distribution (log-uniform where the distribution is log)."""
        point = self._points[number]
        params = {}
        for column, name in enumerate(self.space):
            dist = self.space[name]
            if name not in search_space:
                continue
            if dist.log:
                value = math.exp(math.log(dist.low) + point[column] * (math.log(dist.high) - math.log(dist.low)))
            else:
                value = dist.low + point[column] * (dist.high - dist.low)
            params[name] = min(dist.high, max(dist.low, value))
        return params

    def _tpe(self, number: int) -> optuna.samplers.TPESampler:
        # TPE starts once one trial has finished (the Sobol trials are its start-up design).
        seed = int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=1 if self.startup_trials else 10, multivariate=True, constant_liar=True
        )


# -- studies -------------------------------------------------------------------------------------------------
def default_study_name(store_path: str | Path, head_name: str) -> str:
    """<store name without .zarr>-<head>, e.g. sample-melpatch-protobin."""
    return f"{_store_name(store_path)}-{head_name}"


def _store_name(store_path: str | Path) -> str:
    return Path(str(store_path).rstrip("/")).name.removesuffix(".zarr")


def _password(url: str) -> str | None:
    if "://" not in url or "@" not in url:
        return None
    credentials = url.split("://", 1)[1].rsplit("@", 1)[0]
    return credentials.split(":", 1)[1] if ":" in credentials else None


def redact(url: str) -> str:
    """A storage URL with its password replaced by ***, for messages and files."""
    password = _password(url)
    if password is None:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for a sqlite:/// or postgresql:// URL, with errors that name the URL and the fix."""
    if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://")):
        raise ConfigError(
            f"--storage {redact(url)}: give sqlite:///path/to/study.db or postgresql://user:password@host/db"
        )
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several local workers share one file: wait for the write lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as error:
            raise ConfigError(f"--storage {redact(url)}: the database driver is missing ({error}); for PostgreSQL "
                              "pip install 'psycopg[binary]' (or embedcache[postgres])") from None
        except Exception as error:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean the database is unusable
            failure = error
            # Workers started together may race to create the tables; the loser finds them on the next try.
            time.sleep(0.3 * (attempt + 1))
    first = str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
    password = _password(url)
    if password:
        first = first.replace(password, "***")
    raise ConfigError(
        f"--storage {redact(url)}: cannot open the study database ({first}); start the server, create the "
        "database and role, or fix the URL"
    )


def _fingerprint_diff(stored: dict, ours: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(ours)):
        a, b = stored.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _fingerprint_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: study has {a!r}, this worker {b!r}")
    return diffs


def open_study(storage_url: str, study_name: str, fingerprint: dict, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner, store: dict | None = None) -> optuna.Study:
    """Create the study or join it; refuse to join one made on another store (`store_record`) or with other settings."""
    storage = open_storage(storage_url)
    for attempt in range(5):
        try:
            study = optuna.create_study(
                storage=storage, study_name=study_name, direction="maximize", sampler=sampler, pruner=pruner,
                load_if_exists=True,
            )
            break
        except optuna.exceptions.DuplicatedStudyError:
            # Two workers created it at the same moment: the other one won, load it.
            time.sleep(0.2 * (attempt + 1))
    else:
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler, pruner=pruner)
    if store is not None:
        recorded = study.user_attrs.get(STORE_ATTR)
        if recorded is None:
            study.set_user_attr(STORE_ATTR, {key: store[key] for key in ("fingerprint", "subset")})
        else:
            check_store(recorded, store, f"study {study_name!r} in {redact(storage_url)}")
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        study.set_user_attr(STUDY_ATTR, fingerprint)
    else:
        diffs = _fingerprint_diff(json.loads(json.dumps(stored)), json.loads(json.dumps(fingerprint)))
        if diffs:
            raise ConfigError(
                f"study {study_name!r} in {redact(storage_url)} was started with other settings ({'; '.join(diffs)}); "
                "use the same config and store, or a new --study name"
            )
    fail_dead_local_trials(study)
    return study


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Mark failed the running trials of workers on this machine whose process is gone (killed, even kill -9), so a
    restarted worker neither waits for them nor counts them as running; returns their numbers."""
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "failed_because", "its worker process died")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that number: assume it is the worker
    return True


# -- results ---------------------------------------------------------------------------------------------------
@dataclass
class SweepReport:
    """What a sweep worker did and what the study holds.

    trials: one row per trial of the study (all workers); ran_here: trial numbers this worker trained;
    final: the top-k re-run with several seeds (None while other workers still run trials, or with final=False);
    best: the chosen configuration (after the re-run, by mean validation metric) and best_config its probe config;
    warnings: ranges that collapsed to one value; store: the store's record (`store_record`).
    """

    head: str
    out_dir: Path
    study_name: str
    storage: str
    metric: str
    trials: list[dict]
    ran_here: list[int]
    seconds: float
    final: ProbeReport | None = None
    best: dict | None = None
    best_config: Path | None = None
    results: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    store: dict = field(default_factory=dict)


def trial_rows(study: optuna.Study, metric: str) -> list[dict]:
    """One row per trial: number, state, lr, weight_decay, validation metric, epochs run, worker."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("surplus"):
            continue
        epochs = trial.last_step if trial.last_step is not None else ""
        rows.append({
            "number": trial.number, "state": trial.state.name.lower(),
            "lr": trial.params.get("lr", ""), "weight_decay": trial.params.get("weight_decay", ""),
            f"valid_{metric}": trial.value if trial.state == TrialState.COMPLETE else "",
            f"last_valid_{metric}": trial.intermediate_values.get(trial.last_step, "") if epochs != "" else "",
            "epochs": epochs, "sampler": "sobol" if trial.user_attrs.get("sobol") else "tpe",
            "worker": trial.user_attrs.get("worker", ""), "diverged_epoch": trial.user_attrs.get("diverged_epoch", ""),
        })
    return rows


def format_trials_table(rows: Sequence[dict], metric: str, top: int = 10) -> str:
    """The best `top` completed trials by validation metric, then a count of the rest."""
    key = f"valid_{metric}"
    complete = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: -r[key])
    lines = [f"{'trial':>5}  {'lr':>9}  {'wd':>9}  {'valid ' + metric:>11}  {'epochs':>6}  sampler"]
    for row in complete[:top]:
        lines.append(f"{row['number']:>5}  {row['lr']:>9.3g}  {row['weight_decay']:>9.3g}  "
                     f"{100 * row[key]:>10.2f}%  {row['epochs']:>6}  {row['sampler']}")
    lines.append(_state_counts(rows))
    return "\n".join(lines)


def _state_counts(rows: Sequence[dict]) -> str:
    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail", "running")}
    diverged = sum(r.get("diverged_epoch", "") != "" for r in rows)
    line = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no trials"
    return line + (f" ({diverged} diverged)" if diverged else "")


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["number"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# -- the sweep -------------------------------------------------------------------------------------------------
def _choose_head(resolved: dict, head: str | None) -> dict:
    heads = resolved["heads"]
    if head is None:
        if len(heads) != 1:
            names = ", ".join(h["name"] for h in heads)
            raise ConfigError(f"a sweep tunes one head per study and the config has {len(heads)} ({names}): pass "
                              "--head NAME, or --head a,b for one study each")
        return heads[0]
    for entry in heads:
        if entry["name"] == head:
            return entry
    # Not named in the config: the bare kind with the config's grid range.
    return resolve_config({**resolved, "heads": [head]})["heads"][0]


def _fingerprint(resolved: dict, head: dict, space: dict, sweep: SweepConfig, store: TokenStore,
                 min_epochs: int) -> dict:
    train = {key: resolved["train"][key] for key in TRAIN_FIELDS_THAT_MATTER}
    return {
        "store": {"n_clips": store.n_clips, "num_tokens": store.num_tokens, "embed_dim": store.embed_dim,
                  "labels": list(store.label_names)},
        "layer": resolved["layer"], "task": resolved["task"], "splits": resolved["splits"], "seed": resolved["seed"],
        "subset": resolved.get("subset"),
        "head": {"kind": head["kind"], "options": head["options"]},
        "space": {name: [dist.low, dist.high] for name, dist in space.items()},
        "train": train, "trials": sweep.trials, "startup_trials": sweep.startup_trials,
        "min_epochs": min_epochs, "reduction_factor": sweep.reduction_factor,
    }


def _ask_batch(study: optuna.Study, space: dict, sweep: SweepConfig, worker: str) -> list[optuna.Trial]:
    """Up to K new trials, never beyond the study's budget, which other workers may be spending too."""
    # Enqueued trials (waiting) are not spent yet: the next asks take them.
    remaining = sweep.trials - sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
    asked = []
    for _ in range(min(sweep.batch_trials, remaining)):
        trial = study.ask(space)
        if trial.number >= sweep.trials:
            # Another worker asked the last trials a moment before us: record this one as never run.
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            break
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("sobol", trial.number < sweep.startup_trials)
        asked.append(trial)
    return asked


def _tell_diverged(study: optuna.Study, trial: optuna.Trial, metrics: dict, epoch: int) -> None:
    """Fail one trial whose head diverged (non-finite loss or scores: the bank's `diverged_`, or a NaN metric)."""
    trial.set_user_attr("diverged", True)
    trial.set_user_attr("diverged_epoch", int(metrics.get("diverged_epoch", epoch)))
    study.tell(trial, state=TrialState.FAIL)


def _train_batch(study: optuna.Study, asked: list[optuna.Trial], head: dict, seed: int, train_config: TrainConfig,
                 data: dict, multilabel: bool, metric: str) -> None:
    """Train the asked trials as one bank; report validation per epoch, prune inside the bank, tell the results.

    A head that diverges fails its own trial only; the bank stops it and trains the others on.
    """
    specs = [HeadSpec(head["kind"], t.params["lr"], t.params["weight_decay"], seed, dict(head["options"]))
             for t in asked]
    last_epoch = train_config.epochs
    told: set[int] = set()
    bank = HeadBank(specs, train_config, multilabel=multilabel)

    def diverged(k: int, metrics: dict) -> bool:
        return k in bank.diverged_ or not math.isfinite(float(metrics.get(metric, math.nan)))

    def on_validation(epoch: int, results: dict[int, dict]) -> list[int]:
        stop = []
        # A diverged head is left out of `results` (it is in the bank's diverged_) or comes with a NaN metric.
        for k in sorted(set(results) | bank.diverged_):
            if k in told:
                continue
            trial, metrics = asked[k], results.get(k, bank.valid_metrics_[k])
            if diverged(k, metrics):
                _tell_diverged(study, trial, metrics, epoch)
            else:
                trial.report(float(metrics[metric]), epoch)
                # A trial that ran every epoch is complete; pruning it at the end would throw its result away.
                if epoch == last_epoch or not trial.should_prune():
                    continue
                study.tell(trial, state=TrialState.PRUNED)
            told.add(k)
            stop.append(k)
        return stop

    try:
        bank.fit(data["train"], data["valid"], on_validation=on_validation)
    except BaseException:
        for k, trial in enumerate(asked):
            if k not in told:
                study.tell(trial, state=TrialState.FAIL)
        raise
    for k, trial in enumerate(asked):
        if k in told:
            continue
        metrics = bank.valid_metrics_[k]
        if diverged(k, metrics):
            _tell_diverged(study, trial, metrics, last_epoch)
        else:
            study.tell(trial, float(metrics[metric]))


def _progress_line(study: optuna.Study, sweep: SweepConfig, metric: str, asked: list, seconds: float) -> str:
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    done = sum(t.state in FINISHED for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    numbers = [t.number for t in asked]
    # Other workers may take numbers in between: a range only when this pass's trials are consecutive.
    if len(numbers) > 1 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        numbers = f"{numbers[0]}-{numbers[-1]}"
    else:
        numbers = ",".join(map(str, numbers))
    line = f"trials {numbers} ({len(asked)} per pass, {seconds:.1f} s): done {done}/{sweep.trials}, pruned {pruned}"
    if failed:
        line += f", failed {failed}"
    if complete:
        best = max(complete, key=lambda t: t.value)
        line += (f", best valid {metric} {100 * best.value:.2f}% (trial {best.number}: lr {best.params['lr']:.3g}, "
                 f"wd {best.params['weight_decay']:.3g})")
    return line


@dataclass
class _HeadStudy:
    """One head's study, opened and checked before any head trains."""

    head: dict
    seed: int
    space: dict[str, FloatDistribution]
    warnings: list[str]
    record: dict
    name: str
    storage: str
    out_dir: Path
    study: optuna.Study
    sweep: SweepConfig  # the study's own search budget (one trial for a head fitted without an optimiser)


def fitted_head_sweep(kind: str, sweep: SweepConfig) -> tuple[SweepConfig, str | None]:
    """(the sweep for this head kind, a note): a head fitted from whole splits (knn, logreg) ignores lr and weight
    decay, so every trial would be the same fit; its study runs one trial and re-runs it once."""
    if head_kinds.uses_optimiser(kind) or sweep.trials == 1:
        return sweep, None
    note = (f"{kind} is fitted from whole splits, not trained: it ignores lr and weight decay, so its study runs 1 "
            f"trial instead of {sweep.trials}" + (" (logreg chooses its C on validation itself)" if kind == "logreg"
                                                  else ""))
    return replace(sweep, trials=1, startup_trials=min(sweep.startup_trials, 1), top_k=1), note


def _open_head_study(head: dict, resolved: dict, sweep: SweepConfig, store: TokenStore, record: dict,
                     min_epochs: int, out_dir: Path | None, storage: str | None, study_name: str,
                     notes: list[str]) -> _HeadStudy:
    sweep, fitted = fitted_head_sweep(head["kind"], sweep)
    space = search_space(head, sweep)
    collapsed = collapsed_ranges(head, sweep, space) if fitted is None else [fitted]
    out_dir = Path(out_dir or Path("runs") / "sweeps" / study_name).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{out_dir / 'study.db'}"
    sampler = SobolThenTPESampler(space, sweep.startup_trials, resolved["seed"])
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=sweep.reduction_factor)
    study = open_study(storage, study_name, _fingerprint(resolved, head, space, sweep, store, min_epochs), sampler,
                       pruner, record)
    study.set_user_attr(WARNINGS_ATTR, collapsed)
    (out_dir / "sweep.yaml").write_text(yaml.safe_dump({
        "study": study_name, "storage": redact(storage), "head": head, "sweep": sweep.to_dict(),
        "min_epochs": min_epochs, "space": {name: [d.low, d.high] for name, d in space.items()},
        "warnings": collapsed, "store": record, "probe_config": resolved, "split_notes": notes,
    }, sort_keys=False))
    return _HeadStudy(head, resolved["seed"], space, collapsed, record, study_name, storage, out_dir, study, sweep)


def _run_trials(plan: _HeadStudy, min_epochs: int, train_config: TrainConfig, data: dict, multilabel: bool,
                metric: str, log: Callable[[str], None]) -> SweepReport:
    """Train the study's trials, K per pass, until its budget is spent (by all workers); write trials.csv."""
    study, space, sweep = plan.study, plan.space, plan.sweep
    for note in plan.warnings:
        log(f"warning: {note}")
    log(f"study {plan.name} ({redact(plan.storage)}): {sweep.trials} trials ({sweep.startup_trials} Sobol, then TPE), "
        f"{sweep.batch_trials} per pass, successive halving from epoch {min_epochs} x{sweep.reduction_factor}; "
        f"lr {space['lr'].low:g}..{space['lr'].high:g}, wd {space['weight_decay'].low:g}.."
        f"{space['weight_decay'].high:g}")
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started = time.perf_counter()
    ran_here: list[int] = []
    while asked := _ask_batch(study, space, sweep, worker):
        batch_started = time.perf_counter()
        _train_batch(study, asked, plan.head, plan.seed, train_config, data, multilabel, metric)
        ran_here += [t.number for t in asked]
        log(_progress_line(study, sweep, metric, asked, time.perf_counter() - batch_started))
    rows = trial_rows(study, metric)
    _write_csv(plan.out_dir / "trials.csv", rows)
    log(format_trials_table(rows, metric))
    return SweepReport(plan.head["name"], plan.out_dir, plan.name, redact(plan.storage), metric, rows, ran_here,
                       time.perf_counter() - started, warnings=plan.warnings, store=plan.record)


def run_sweep(
    store_path: str | Path | None,
    head: str | None,
    out_dir: str | Path | None = None,
    config: dict | None = None,
    sweep: SweepConfig | dict | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    final: bool = True,
    final_now: bool = False,
    log: Callable[[str], None] = print,
    expect_store: dict | None = None,
) -> SweepReport:
    """Run trials of one head's study until its budget is spent, then re-run the top configurations with seeds.

    out_dir: default runs/sweeps/<study>; storage: default sqlite:///<out>/study.db; study_name: default
    <store>-<head>. Several workers (processes or machines) may run this at once on one study. The re-run waits
    until no trial is running, unless final_now (a killed worker leaves its trials running in the study for good).
    expect_store: the store a best.yaml was chosen on (`read_store_record`); another store is refused.
    """
    return run_sweeps(store_path, None if head is None else [head], out_dir=out_dir, config=config, sweep=sweep,
                      storage=storage, study_name=study_name, final=final, final_now=final_now, log=log,
                      expect_store=expect_store)[0]


def run_sweeps(
    store_path: str | Path | None,
    heads: Sequence[str] | None,
    out_dir: str | Path | None = None,
    config: dict | None = None,
    sweep: SweepConfig | dict | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    final: bool = True,
    final_now: bool = False,
    log: Callable[[str], None] = print,
    expect_store: dict | None = None,
) -> list[SweepReport]:
    """`run_sweep` for each head (None: the config's only head), one study each, reading the store once.

    With several heads, each head's outputs go to out_dir/<head> (default runs/sweeps/<store>/<head>), its study is
    <study_name>-<head> (default <store>-<head>) and out_dir/summary.csv holds one row per head (`summary_rows`).
    Every study is opened and checked before any head trains; the re-runs with seeds follow all the trials.
    """
    sweep = sweep if isinstance(sweep, SweepConfig) else SweepConfig.from_dict(sweep or {})
    resolved = resolve_config(config, store=absolute_url(store_path) if store_path is not None else None)
    if resolved["store"] is None:
        raise ConfigError("no store given: pass STORE or set `store:` in the config")
    if isinstance(resolved["layer"], list) or resolved["layer"] == "all":
        raise ConfigError(f"layer: {resolved['layer']!r}: a sweep tunes one layer at a time; give one layer "
                          "(--layer N in probe configs, layer: N) and sweep each layer you want as its own study")
    stores, resolved["splits"], notes = choose_splits(resolved)
    for note in notes:
        log(note)
    if resolved["splits"]["valid"] is None:
        raise ConfigError(
            "splits.valid is null: a sweep chooses on validation, so map `valid` to a split (splits.valid in the "
            f"probe config or --splits valid=NAME; the store's splits: {', '.join(stores['valid'].split_names)})"
        )
    chosen = [_choose_head(resolved, head) for head in heads or [None]]
    names = [entry["name"] for entry in chosen]
    if len(set(names)) != len(names):
        raise ConfigError(f"--head {','.join(heads or [])}: each head once (one study per head)")

    if resolved["task"] == "sed":
        raise ConfigError("sweep does not run task sed (sound-event detection) yet: run `embedcache probe --task sed` "
                          "with an lr grid instead")
    # Trials need train and valid only; the test split is read by the final re-run.
    data = open_data({**resolved, "splits": {**resolved["splits"], "test": None}}, stores)
    store = data["train"].store
    record = store_record(store)
    if expect_store is not None:
        check_store(expect_store, record, expect_store.get("source", "the config"))
    resolved["layer"] = data["train"].layer
    multilabel = store.is_multilabel if resolved["task"] is None else resolved["task"] == "multilabel"
    resolved["task"] = "multilabel" if multilabel else "multiclass"
    metric = selection_metric(multilabel)
    train_config = TrainConfig.from_dict({**resolved["train"], "data_seed": resolved["seed"]})
    min_epochs = sweep.min_epochs or first_rung(train_config.epochs, sweep.trials, sweep.reduction_factor)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    several = len(chosen) > 1
    top = Path(out_dir or Path("runs") / "sweeps" / _store_name(resolved["store"])).resolve() if several else None
    plans = []
    for entry in chosen:
        if study_name and several:
            name = f"{study_name}-{entry['name']}"
        else:
            name = study_name or default_study_name(resolved["store"], entry["name"])
        folder = top / entry["name"] if several else out_dir
        plans.append(_open_head_study(entry, resolved, sweep, store, record, min_epochs, folder, storage, name, notes))
    reports = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for plan in plans:
            reports.append(_run_trials(plan, min_epochs, train_config, data, multilabel, metric, log))
    del data
    for plan, report in zip(plans, reports, strict=True):
        if not final:
            continue
        running = [r["number"] for r in report.trials if r["state"] == "running"]
        if running and not final_now:
            log(f"{report.study_name}: {len(running)} trial(s) still running on other workers ({running[:8]}); run "
                "this command again when they finish to re-run the top configurations (or with --final-now if a "
                "worker was killed)")
            continue
        try:
            _final_rerun(report, resolved, plan.head, plan.sweep, log)
        except ConfigError as error:
            if not several:
                raise
            log(f"{report.head}: {error}")  # the other heads' re-runs still go ahead
    if several:
        _write_csv(top / "summary.csv", summary_rows(reports))
    return reports


def _final_rerun(report: SweepReport, resolved: dict, head: dict, sweep: SweepConfig,
                 log: Callable[[str], None]) -> None:
    """Re-run the top-k trials with final_seeds seeds as one probe run; export the best as a probe config."""
    key = f"valid_{report.metric}"
    complete = sorted((r for r in report.trials if r["state"] == "complete"), key=lambda r: (-r[key], r["number"]))
    if not complete:
        raise ConfigError(f"study {report.study_name}: no trial completed (all pruned or diverged); widen the ranges")
    top = complete[: sweep.top_k]
    config = copy.deepcopy(resolved)
    config["heads"] = [{"name": f"trial{row['number']}", "kind": head["kind"], "lr": [row["lr"]],
                        "weight_decay": [row["weight_decay"]], "options": dict(head["options"])} for row in top]
    config["seeds"] = sweep.final_seeds
    final = run_probe(resolved["store"], None, report.out_dir / "final", config=config, overwrite=True, log=log)
    by_name = {result.name: result for result in final.results}
    results = []
    for row in top:
        result = by_name[f"trial{row['number']}"]
        results.append({
            "trial": row["number"], "lr": row["lr"], "weight_decay": row["weight_decay"], f"trial_{key}": row[key],
            f"{key}": result.valid.get(report.metric), f"{key}_std": result.valid.get(f"{report.metric}_std"),
            f"test_{report.metric}": result.test.get(report.metric, ""),
            f"test_{report.metric}_std": result.test.get(f"{report.metric}_std", ""),
            "seeds": len(result.per_seed),
        })
    # The paper's choice: the best mean validation metric over seeds (ties: the better trial).
    best = max(results, key=lambda r: r[key])
    _write_csv(report.out_dir / "results.csv", results)
    best_config = copy.deepcopy(final.config)
    best_config["heads"] = [{"name": head["name"], "kind": head["kind"], "lr": [best["lr"]],
                             "weight_decay": [best["weight_decay"]], "options": dict(head["options"])}]
    best_config["grid"] = {"lr": [best["lr"]], "weight_decay": [best["weight_decay"]]}
    path = report.out_dir / "best.yaml"
    warned = "".join(f"# Warning: {note}\n" for note in report.warnings)
    path.write_text(
        f"# Best of study {report.study_name}: trial {best['trial']}, valid {report.metric} "
        f"{best[key]:.4f} ± {best[key + '_std']:.4f} over {best['seeds']} seeds.\n"
        f"# Re-run: embedcache probe --config {path.name} --out RUN_DIR (the store is named below)\n"
        f"{warned}"
        "# Chosen on this store (its fingerprint changes with embedcache append; a sweep refuses another):\n"
        f"# embedcache-store: {json.dumps(report.store)}\n"
        + yaml.safe_dump(best_config, sort_keys=False)
    )
    report.final, report.best, report.best_config, report.results = final, best, path, results


def format_results(report: SweepReport) -> str:
    """The re-run table (mean ± std over seeds, in %) and the chosen configuration."""
    if report.final is None:
        return "(no final re-run yet)"
    lines = [format_comparison_table(report.final)]
    best = report.best
    lines.append(f"best: trial {best['trial']} lr {best['lr']:.4g} wd {best['weight_decay']:.4g} -> "
                 f"{report.best_config}")
    return "\n".join(lines)


def summary_rows(reports: Sequence[SweepReport]) -> list[dict]:
    """One row per head's study: trial counts, the chosen lr and wd, validation and test (mean ± std over seeds).

    Before the re-run with seeds, the best completed trial so far (its validation metric, no test).
    """
    rows = []
    for report in reports:
        key = f"valid_{report.metric}"
        row = {"head": report.head, "study": report.study_name, "trials": _state_counts(report.trials),
               "metric": report.metric, "lr": "", "weight_decay": "", "valid": "", "valid_std": "", "test": "",
               "test_std": "", "seeds": 0, "out_dir": str(report.out_dir), "warnings": " | ".join(report.warnings)}
        complete = [r for r in report.trials if r["state"] == "complete"]
        if report.best is not None:
            best = report.best
            row.update(lr=best["lr"], weight_decay=best["weight_decay"], valid=best[key], valid_std=best[f"{key}_std"],
                       test=best[f"test_{report.metric}"], test_std=best[f"test_{report.metric}_std"],
                       seeds=best["seeds"])
        elif complete:
            best = max(complete, key=lambda r: r[key])
            row.update(lr=best["lr"], weight_decay=best["weight_decay"], valid=best[key], seeds=1)
        rows.append(row)
    return rows


def format_summary(reports: Sequence[SweepReport]) -> str:
    """The studies side by side, one line per head (`summary_rows`; metrics in %)."""

    def cell(mean, std) -> str:
        if mean in ("", None):
            return "-"
        return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std not in ("", None) else "")

    header = ["head", "study", "trials", "lr", "wd", "seeds", "valid (%)", "test (%)"]
    lines = [[row["head"], row["study"], row["trials"], f"{row['lr']:.3g}" if row["lr"] != "" else "-",
              f"{row['weight_decay']:.3g}" if row["weight_decay"] != "" else "-", str(row["seeds"]),
              f"{row['metric']} {cell(row['valid'], row['valid_std'])}",
              f"{row['metric']} {cell(row['test'], row['test_std'])}"] for row in summary_rows(reports)]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
                     for line in [header, *lines])
