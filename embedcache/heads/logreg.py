"""`logreg`: L2-regularised logistic regression on standardised pooled vectors, fitted by scikit-learn (lbfgs) with C
chosen on validation; fitted, not trained by the bank."""

from __future__ import annotations

import math

import numpy as np
import torch

from embedcache.errors import ConfigError, EmbedcacheWarning
from embedcache.heads.base import ProbeHead, TokenBatch
from embedcache.heads.pooled import LabelledSplit, pool, pooled_width, resolve_pooling

# The logit magnitude of a class the training split gives no choice about (always or never present): its score is
# 0 or 1 to float precision, where scikit-learn refuses to fit a model with one class.
CERTAIN = 1e4


def c_grid(c_min: float, c_max: float, c_steps: int) -> list[float]:
    """c_steps log-spaced values of C from c_min to c_max (one value, c_min, when c_steps is 1)."""
    if c_steps == 1:
        return [float(c_min)]
    return [float(c) for c in np.logspace(math.log10(c_min), math.log10(c_max), c_steps)]


class LogisticPath:
    """Logistic regressions fitted along a path of increasing C, each fit starting from the previous C's solution
    (scikit-learn's warm_start, as its regularisation paths do): one binary model per class on multi-label data, or
    one multinomial model over the classes present on multi-class data. Large C on nearly separable data needs many
    lbfgs iterations from zero; from the smaller C's solution it needs few, and the fits that still stop at
    max_iter are counted in `unconverged` (C values), not printed by scikit-learn one by one."""

    def __init__(self, labels: np.ndarray, multilabel: bool, max_iter: int):
        from sklearn.linear_model import LogisticRegression

        self.labels, self.multilabel, self.max_iter = labels, multilabel, max_iter
        count = labels.shape[1] if multilabel else 1
        self.models = [LogisticRegression(max_iter=max_iter, warm_start=True) for _ in range(count)]
        self.unconverged: list[float] = []

    def fit(self, features: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        """(coef [C, D], intercept [C]) at this C, starting from the previous call's solution."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        labels, num_classes = self.labels, self.labels.shape[1]
        coef = np.zeros((num_classes, features.shape[1]))
        intercept = np.full(num_classes, -CERTAIN)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.multilabel:
                for c_index in range(num_classes):
                    target = labels[:, c_index]
                    if target.min() == target.max():
                        intercept[c_index] = CERTAIN if target[0] else -CERTAIN
                        continue
                    model = self._fit(self.models[c_index], features, target, c)
                    coef[c_index], intercept[c_index] = model.coef_[0], model.intercept_[0]
                return coef, intercept
            target = labels.argmax(axis=1)
            present = np.unique(target)
            if len(present) == 1:
                intercept[present[0]] = CERTAIN
                return coef, intercept
            model = self._fit(self.models[0], features, target, c)
        if len(present) == 2:  # one coefficient row: P(second) = sigmoid(z) = softmax([0, z])[1]
            coef[present[0]], intercept[present[0]] = 0.0, 0.0
            coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
        else:
            coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
        return coef, intercept

    def _fit(self, model, features: np.ndarray, target: np.ndarray, c: float):
        model.set_params(C=c).fit(features, target)
        if int(np.max(model.n_iter_)) >= self.max_iter:
            self.unconverged.append(c)
        return model


def logistic_scores(features: np.ndarray, coef: np.ndarray, intercept: np.ndarray, multilabel: bool) -> np.ndarray:
    """Scores [N, C] of standardised features: sigmoid per class, or softmax over the classes."""
    logits = features @ coef.T + intercept
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    logits = logits - logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


class LogRegHead(ProbeHead):
    """L2-regularised logistic regression on frozen, pooled features, fitted by scikit-learn's lbfgs with the
    regularisation chosen on validation, as CLIP's linear-probe evaluation (Radford et al., "Learning Transferable
    Visual Models From Natural Language Supervision", ICML 2021, which sweeps C on validation; max_iter 1000 as
    there).

    `fit_data` standardises the training clips' pooled vectors (scikit-learn's StandardScaler: mean and population
    std, 1 for a constant feature) and fits LogisticRegression(C, lbfgs): one binary model per class on multi-label
    data (one-vs-rest), one multinomial model on multi-class data. C is the best of `c_steps` log-spaced values in
    [c_min, c_max] (default 1e-3 .. 1e3, 7 values), fitted from the smallest up, each fit starting from the previous
    one's solution (`LogisticPath`), by the validation split's selection metric (mAP, or accuracy; the first best
    wins ties), or fixed by `C`; with no validation split, C = 1 (scikit-learn's default). The bank
    takes no gradient step for it, so lr and weight decay are ignored (a probe grid gives it one configuration).
    A class the training split always or never has gets a constant score of 1 or 0. Fitted state in buffers
    (float64): mean_, scale_ [D], coef_ [C, D], intercept_ [C], C_ (the chosen C). Pooling as `linear`.
    Parameters (the fitted coefficients): D C + C, as `linear`.
    """

    kind = "logreg"
    uses_optimiser = False

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        pooling: str = "auto",
        C: float | None = None,  # scikit-learn's name for the inverse L2 strength
        c_min: float = 1e-3,
        c_max: float = 1e3,
        c_steps: int = 7,
        max_iter: int = 1000,
        generator: torch.Generator | None = None,  # accepted like every head's; the fit draws nothing
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        for name, value in (("C", C), ("c_min", c_min), ("c_max", c_max)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or
                                      not 0 < value < math.inf):
                raise ConfigError(f"logreg head: {name}={value!r} must be a finite number > 0")
        if c_max < c_min:
            raise ConfigError(f"logreg head: c_max={c_max} must be >= c_min={c_min}")
        for name, value in (("c_steps", c_steps), ("max_iter", max_iter)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"logreg head: {name}={value!r} must be a whole number >= 1")
        self.pooling = resolve_pooling(pooling, has_prefix)
        self.C = None if C is None else float(C)
        self.c_min, self.c_max, self.c_steps, self.max_iter = float(c_min), float(c_max), c_steps, max_iter
        self._options = {"pooling": self.pooling, "C": self.C, "c_min": self.c_min, "c_max": self.c_max,
                         "c_steps": c_steps, "max_iter": max_iter}
        width = pooled_width(self.pooling, embed_dim)
        self.register_buffer("mean_", torch.zeros(width, dtype=torch.float64))
        self.register_buffer("scale_", torch.ones(width, dtype=torch.float64))
        self.register_buffer("coef_", torch.zeros(num_classes, width, dtype=torch.float64))
        self.register_buffer("intercept_", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("C_", torch.tensor(0.0, dtype=torch.float64))  # 0 until fitted (a chosen C is > 0)
        self.register_buffer("multilabel_", torch.tensor(True))

    def candidates(self, has_valid: bool) -> list[float]:
        """The values of C to fit: the fixed C, the grid (with a validation split), or scikit-learn's default 1."""
        if self.C is not None:
            return [self.C]
        return c_grid(self.c_min, self.c_max, self.c_steps) if has_valid else [1.0]

    def fit_data(self, train: LabelledSplit, valid: LabelledSplit | None) -> None:
        """Standardise, fit every candidate C, keep the best on `valid`."""
        from sklearn.preprocessing import StandardScaler

        from embedcache import metrics

        scaler = StandardScaler()
        features = scaler.fit_transform(train.pooled(self.pooling).astype(np.float64))
        grid = self.candidates(valid is not None)
        valid_features = scaler.transform(valid.pooled(self.pooling).astype(np.float64)) if len(grid) > 1 else None
        path = LogisticPath(train.labels, train.multilabel, self.max_iter)
        best, best_score = None, -math.inf
        for c in grid:
            coef, intercept = path.fit(features, c)
            if len(grid) == 1:
                best = (c, coef, intercept)
                break
            scores = logistic_scores(valid_features, coef, intercept, train.multilabel)
            if train.multilabel:
                score = metrics.multilabel_metrics(valid.labels, scores)["map"]
            else:
                score = metrics.multiclass_metrics(valid.labels, scores)["accuracy"]
            score = score if math.isfinite(score) else -math.inf
            if best is None or score > best_score:  # the first best wins ties
                best, best_score = (c, coef, intercept), score
        c, coef, intercept = best
        _warn_unconverged(path.unconverged, c, self.max_iter)
        device = self.coef_.device
        for name, value in (("mean_", scaler.mean_), ("scale_", scaler.scale_), ("coef_", coef),
                            ("intercept_", intercept), ("C_", np.float64(c))):
            setattr(self, name, torch.as_tensor(np.asarray(value, dtype=np.float64), device=device))
        self.multilabel_ = torch.tensor(bool(train.multilabel), device=device)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        self._check_dim(batch)
        if float(self.C_) == 0.0:
            raise ConfigError("logreg head: not fitted; HeadBank.fit calls fit_data with the training split")
        with torch.autocast(batch.tokens.device.type, enabled=False):
            features = (pool(batch, self.pooling).double() - self.mean_) / self.scale_
            return (features @ self.coef_.t() + self.intercept_).float()

    def num_parameters(self) -> int:
        """The fitted coefficients and intercepts (D C + C); the standardisation statistics are not counted."""
        return self.coef_.numel() + self.intercept_.numel()


def _warn_unconverged(unconverged: list[float], chosen: float, max_iter: int) -> None:
    """One warning for every fit that stopped at max_iter, saying whether the chosen C is among them."""
    if not unconverged:
        return
    import warnings

    values = ", ".join(f"{c:g}" for c in sorted(set(unconverged)))
    which = f"the chosen C = {chosen:g} among them" if chosen in unconverged else f"the chosen C = {chosen:g} converged"
    warnings.warn(f"logreg head: lbfgs stopped at max_iter={max_iter} before converging in {len(unconverged)} "
                  f"fit(s) (C = {values}; {which}); raise it with --head-option logreg.max_iter=N, or narrow the grid "
                  "with logreg.c_max", EmbedcacheWarning, stacklevel=2)
