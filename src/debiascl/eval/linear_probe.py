"""Linear probes on frozen features: logistic regression with class-balanced label fractions.

Protocol (SimCLR, Chen et al. ICML 2020, Sec. B.6 / semi-supervised 1% and 10% subsets): draw a
class-balanced labelled subset of the training split, standardise the features with statistics
of that subset only, fit an L2-regularised multinomial logistic regression, and report test
accuracy, mean and spread over several label draws. The regularisation strength C is chosen by
stratified k-fold cross-validation on the labelled subset only; the test split is used once, for
the final score.

Cost on the build machine (2 cores, ``OMP_NUM_THREADS=1``, 50k x 512 random-ReLU features of
Fashion-MNIST, lbfgs): one full fit takes about 15 s at C=0.01 (converges in ~250 iterations).
Cross-validation therefore runs on a class-balanced subsample of at most ``cv_max_samples``
labelled rows, which bounds its cost independently of N.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from debiascl.errors import ConfigError, DataError, check
from debiascl.eval._arrays import ArrayLike, as_numpy

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
"""C grid for cross-validation (sklearn's C multiplies the summed log-loss)."""

FALLBACK_C = 0.1
"""C used when a labelled subset is too small to cross-validate (fewer than 2 per class)."""


#: Fewer labelled images than this in some class make a label fraction unreliable.
MIN_LABELS_PER_CLASS = 2


class LabelFractionWarning(UserWarning):
    """A label fraction leaves fewer than :data:`MIN_LABELS_PER_CLASS` labels in some class."""


def labels_per_class(labels: ArrayLike, fraction: float) -> dict[int, int]:
    """Labelled images per class that :func:`class_balanced_subset` draws at ``fraction``."""
    y = _labels_np(labels)
    classes, counts = np.unique(y, return_counts=True)
    return {
        int(c): min(int(n), max(1, math.floor(fraction * int(n) + 0.5)))
        for c, n in zip(classes, counts, strict=True)
    }


def warn_thin_fractions(labels: ArrayLike, fractions: Sequence[float]) -> dict[str, int]:
    """Warn (:class:`LabelFractionWarning`) about fractions leaving under 2 labels in a class.

    Returns ``{fraction key: smallest labels per class}`` of the fractions warned about.
    """
    thin: dict[str, int] = {}
    for f in fractions:
        smallest = min(labels_per_class(labels, f).values())
        if smallest < MIN_LABELS_PER_CLASS:
            thin[fraction_key(f)] = smallest
    if thin:
        listed = ", ".join(f"{k} ({n} per class)" for k, n in thin.items())
        warnings.warn(
            f"label fractions {listed} leave fewer than {MIN_LABELS_PER_CLASS} labelled images "
            f"in some class: C cannot be cross-validated (C={FALLBACK_C} is used) and the "
            "accuracy rests on single images; use larger eval.linear_probe_fractions or "
            "eval.few_shot",
            LabelFractionWarning,
            stacklevel=3,
        )
    return thin


def fraction_key(fraction: float) -> str:
    """Result key of a label fraction: 1.0 -> "100%", 0.1 -> "10%", 0.005 -> "0.5%"."""
    return f"{fraction * 100:g}%"


def _labels_np(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    y = as_numpy(labels, name)
    check(y.ndim == 1 and y.size > 0, f"{name} must be a non-empty 1-D array", DataError)
    check(
        np.issubdtype(y.dtype, np.integer) or bool(np.all(y == np.round(y))),
        f"{name} must hold integer class labels",
        DataError,
    )
    return y.astype(np.int64)


def class_balanced_subset(labels: ArrayLike, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a stratified random subset holding ``fraction`` of every class.

    Class c with n_c samples contributes ``min(n_c, max(1, round(fraction * n_c)))`` samples, so
    every class is present and classes keep their proportions (equal counts on balanced data).

    Args:
        labels: (N,) class labels.
        fraction: in (0, 1]; 1.0 returns every index.
        seed: draws are reproducible per seed and independent across seeds.

    Returns:
        (n,) int64 sorted indices into ``labels``.
    """
    check(
        0.0 < fraction <= 1.0,
        f"label fraction must be in (0, 1], got {fraction}",
        ConfigError,
    )
    y = _labels_np(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = min(members.size, max(1, math.floor(fraction * members.size + 0.5)))
        picked.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(picked))


def few_shot_subset(labels: ArrayLike, shots: int, seed: int = 0) -> np.ndarray:
    """Indices of ``shots`` random samples per class (all of a class with fewer), sorted."""
    check(shots >= 1, f"shots must be >= 1, got {shots}", ConfigError)
    y = _labels_np(labels)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:shots] for c in np.unique(y)]
    return np.sort(np.concatenate(picked))


def _fit(x: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> LogisticRegression:
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def select_C(
    x: np.ndarray,
    y: np.ndarray,
    Cs: Sequence[float] = DEFAULT_CS,
    folds: int = 3,
    max_samples: int | None = 5000,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """C with the best mean validation accuracy under stratified k-fold CV on (x, y) only.

    Standardisation is refitted inside each fold. With more than ``max_samples`` rows, CV runs on
    a class-balanced subsample (the chosen C is then used for the fit on all rows; since sklearn's
    C scales the summed loss, the per-sample regularisation still shrinks as the data grow).
    Returns :data:`FALLBACK_C` when some class has fewer than 2 samples. Ties go to the smaller
    C (stronger regularisation).
    """
    check(len(Cs) > 0 and all(c > 0 for c in Cs), f"Cs must be positive, got {Cs}", ConfigError)
    if len(Cs) == 1:
        return float(Cs[0])
    if max_samples is not None and y.size > max_samples:
        keep = class_balanced_subset(y, max_samples / y.size, seed)
        x, y = x[keep], y[keep]
    min_count = int(np.unique(y, return_counts=True)[1].min())
    n_splits = min(folds, min_count)
    if n_splits < 2:
        return FALLBACK_C
    Cs = sorted(float(c) for c in Cs)
    scores = np.zeros(len(Cs))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fit_rows, val_rows in splitter.split(x, y):
        scaler = StandardScaler().fit(x[fit_rows])
        x_fit, x_val = scaler.transform(x[fit_rows]), scaler.transform(x[val_rows])
        # Warm-start along the increasing-C path: each fit starts near its solution.
        clf = LogisticRegression(max_iter=max_iter, warm_start=True)
        for i, C in enumerate(Cs):
            clf.set_params(C=C)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(x_fit, y[fit_rows])
            scores[i] += clf.score(x_val, y[val_rows])
    best = 0
    for i in range(1, len(Cs)):
        if scores[i] > scores[best] + 1e-12:
            best = i
    return Cs[best]


def _probe_once(
    x: np.ndarray,
    y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    C: float | None,
    Cs: Sequence[float],
    cv_folds: int,
    cv_max_samples: int | None,
    max_iter: int,
    seed: int,
) -> tuple[float, float, bool]:
    """Fit on the labelled subset, return (test accuracy, C, converged)."""
    if C is None:
        C = select_C(x, y, Cs, cv_folds, cv_max_samples, max_iter, seed)
    scaler = StandardScaler().fit(x)  # statistics of the labelled subset only
    clf = _fit(scaler.transform(x), y, C, max_iter)
    acc = float(np.mean(clf.predict(scaler.transform(test_x)) == test_y))
    converged = bool(np.all(np.asarray(clf.n_iter_) < max_iter))
    return acc, float(C), converged


def _summary(per_seed: list[float], Cs: list[float], n_train: int) -> dict[str, Any]:
    arr = np.asarray(per_seed, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "per_seed": [float(a) for a in arr],
        "C": Cs,
        "n_train": n_train,
    }


def _check_inputs(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tx = as_numpy(train_x, "train_x")
    vx = as_numpy(test_x, "test_x")
    check(
        tx.ndim == 2 and vx.ndim == 2 and tx.shape[1] == vx.shape[1],
        f"train_x and test_x must be 2-D with the same width, got {tx.shape} and {vx.shape}",
        DataError,
    )
    ty = _labels_np(train_y, "train_y")
    vy = _labels_np(test_y, "test_y")
    check(
        ty.shape[0] == tx.shape[0] and vy.shape[0] == vx.shape[0],
        f"labels must match the feature rows: train {tx.shape[0]} vs {ty.shape[0]}, "
        f"test {vx.shape[0]} vs {vy.shape[0]}",
        DataError,
    )
    check(
        bool(np.isfinite(tx).all() and np.isfinite(vx).all()),
        "features contain NaN or inf; check the encoder output",
        DataError,
    )
    check(
        np.unique(ty).size >= 2,
        "the linear probe needs at least 2 classes in train_y",
        DataError,
    )
    return tx, ty, vx, vy


def _run(
    subsets: dict[str, list[np.ndarray]],
    tx: np.ndarray,
    ty: np.ndarray,
    vx: np.ndarray,
    vy: np.ndarray,
    C: float | None,
    Cs: Sequence[float],
    cv_folds: int,
    cv_max_samples: int | None,
    max_iter: int,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    not_converged = []
    for key, draws in subsets.items():
        accs, chosen = [], []
        for seed, rows in enumerate(draws):
            acc, c, ok = _probe_once(
                tx[rows], ty[rows], vx, vy, C, Cs, cv_folds, cv_max_samples, max_iter, seed
            )
            accs.append(acc)
            chosen.append(c)
            if not ok:
                not_converged.append(key)
        out[key] = _summary(accs, chosen, int(draws[0].size))
    if not_converged:
        warnings.warn(
            f"logistic regression hit max_iter={max_iter} for {sorted(set(not_converged))}; "
            "raise eval.probe_max_iter for a converged probe",
            ConvergenceWarning,
            stacklevel=3,
        )
    return out


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    fractions: Sequence[float] = (1.0, 0.1, 0.01),
    seeds: int = 1,
    *,
    C: float | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    cv_folds: int = 3,
    cv_max_samples: int | None = 5000,
    max_iter: int = 1000,
) -> dict[str, dict[str, Any]]:
    """Logistic-regression probe accuracy for each label fraction.

    Args:
        train_x, test_x: (N, D) and (M, D) frozen features.
        train_y, test_y: (N,) and (M,) integer labels.
        fractions: labelled fractions of the training split, each in (0, 1].
        seeds: label draws per fraction below 1 (draw s uses seed s); fraction 1.0 is the same
            subset for every seed and lbfgs is deterministic, so it is fitted once.
        C: fixed inverse regularisation strength; None selects it from ``Cs`` by
            ``cv_folds``-fold CV on each labelled subset (see :func:`select_C`).
        cv_max_samples: rows used by CV at most (a class-balanced subsample).
        max_iter: lbfgs iterations per fit.

    Returns:
        ``{"100%": {"mean", "std", "per_seed", "C", "n_train"}, "10%": ..., "1%": ...}`` with
        accuracies in [0, 1]; ``std`` is the sample standard deviation over draws (0 for one).
    """
    check(seeds >= 1, f"seeds must be >= 1, got {seeds}", ConfigError)
    check(C is None or C > 0, f"C must be > 0, got {C}", ConfigError)
    tx, ty, vx, vy = _check_inputs(train_x, train_y, test_x, test_y)
    warn_thin_fractions(ty, fractions)
    subsets = {
        fraction_key(f): [class_balanced_subset(ty, f, s) for s in range(1 if f >= 1.0 else seeds)]
        for f in fractions
    }
    return _run(subsets, tx, ty, vx, vy, C, Cs, cv_folds, cv_max_samples, max_iter)


def few_shot_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    shots: Sequence[int] = (1, 5, 10),
    seeds: int = 3,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Linear probe with ``k`` labelled images per class: ``{"1-shot": {...}, "5-shot": ...}``.

    Same fields and keyword arguments as :func:`linear_probe`; with fewer than 2 images per class
    CV is impossible and C falls back to :data:`FALLBACK_C`.
    """
    check(seeds >= 1, f"seeds must be >= 1, got {seeds}", ConfigError)
    tx, ty, vx, vy = _check_inputs(train_x, train_y, test_x, test_y)
    subsets = {f"{k}-shot": [few_shot_subset(ty, k, s) for s in range(seeds)] for k in shots}
    opts = {
        "C": None,
        "Cs": DEFAULT_CS,
        "cv_folds": 3,
        "cv_max_samples": 5000,
        "max_iter": 1000,
        **kwargs,
    }
    return _run(subsets, tx, ty, vx, vy, **opts)


def raw_pixel_features(images: ArrayLike) -> np.ndarray:
    """(N, C*H*W) float32 pixels in [0, 1] (uint8 divided by 255) from (N, ...) images."""
    arr = as_numpy(images, "images")
    check(arr.ndim >= 2, f"images must be (N, ...), got shape {arr.shape}", DataError)
    flat = arr.reshape(arr.shape[0], -1)
    if flat.dtype == np.uint8:
        return flat.astype(np.float32) / 255.0
    return flat.astype(np.float32)


def raw_pixel_probe(
    train_images: ArrayLike,
    train_y: ArrayLike,
    test_images: ArrayLike,
    test_y: ArrayLike,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """The "logistic regression on raw pixels" reference: :func:`linear_probe` on flat pixels."""
    return linear_probe(
        raw_pixel_features(train_images), train_y, raw_pixel_features(test_images), test_y, **kwargs
    )
