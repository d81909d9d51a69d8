"""Fairness penalties: pure functions, tensors in, scalar (or table) out (DESIGN 3.5).

Nothing here holds state or reads a config; the fairness terms (:mod:`debiascl.fairness.terms`)
own running moments and schedules and call these. Shapes: ``z`` (n, D) embeddings (any float
dtype; computed in float32), ``target`` (n,) integer attribute codes in ``[-1, K)`` with -1 =
missing (the row is left out), ``weight`` (n,) optional non-negative sample weights. Penalties are
dimensionless (squared standardised distances averaged over coordinates).

* :func:`masked_cross_entropy`, :func:`confusion_loss`: a discriminator's loss and the encoder's
  confusion objective (AdFair-CLIP, MICCAI 2025).
* :func:`group_mean_gap`: standardised or Fisher-whitened spread of the groups' means (linear MMD,
  Louizos et al., ICLR 2016); :func:`within_group_covariance` its metric.
* :func:`class_conditional_mean_gap`: the same within each class (Madras et al., ICML 2018).
* :func:`label_balance_table`: P(a)/P(a|y) sample weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from debiascl.errors import DataError


# ----------------------------------------------------------------------------- pure losses
def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    weight = weight.to(values)
    return (values * weight).sum() / weight.sum().clamp_min(torch.finfo(values.dtype).tiny)


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean CE over rows with ``target >= 0``; logits (n, K), target (n,). 0 if none labelled.

    ``weight`` (n,) >= 0: optional sample weights (a weighted mean over the labelled rows).
    """
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits[keep], target[keep], reduction="none")
    return _weighted_mean(ce, None if weight is None else weight[keep])


def confusion_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean KL(uniform || softmax(logits)) over rows with ``target >= 0``; >= 0, 0 iff uniform.

    logits (n, K); target (n,) only selects the labelled rows; ``weight`` (n,) optional sample
    weights.
    """
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    lg = logits[keep]
    if lg.dtype in (torch.float16, torch.bfloat16):  # AMP: the log of small probabilities
        lg = lg.float()
    logp = F.log_softmax(lg, dim=-1)
    k = logits.shape[-1]
    kl = -logp.mean(dim=-1) - math.log(k)
    return _weighted_mean(kl, None if weight is None else weight[keep])


def group_mean_gap(
    z: torch.Tensor,
    target: torch.Tensor,
    num_values: int,
    weight: torch.Tensor | None = None,
    whiten: bool = False,
    shrinkage: float = 0.1,
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standardised spread of the attribute groups' mean embeddings (a linear-MMD penalty).

    ``sum_k p_k * mean_d ((mu_k,d - mu_d) / sigma_d)^2`` over the rows with ``target >= 0``,
    where mu_k is the (weighted) mean of group k, mu and sigma the (weighted) mean and standard
    deviation of each coordinate and p_k the group's weight share. It is 0 exactly when every
    group has the same mean, i.e. no linear read-out separates the groups by their means, which
    is what a linear leakage probe exploits; it is invariant to rescaling coordinates, so it
    cannot be lowered by shrinking the attribute direction. Unlike a discriminator it is
    recomputed from each batch and cannot be out-run (mean matching as in the MMD penalty of
    the Variational Fair Autoencoder, Louizos et al., ICLR 2016, with a linear kernel).

    z (n, D); target (n,) codes in [-1, num_values); weight (n,) optional sample weights
    (e.g. :func:`label_balance_table`, so class differences are not counted as group gaps).

    ``whiten=True`` measures the gaps in the metric of the pooled within-group covariance S
    (shrunk towards ``tr(S)/D * I`` by ``shrinkage``), ``sum_k p_k (mu_k - mu)^T S^-1 (mu_k - mu)
    / D``: a Fisher-discriminant separation, which also sees a small gap along a direction in
    which the groups barely vary (a tight, perfectly separable signal).

    ``metric`` (D, D), with ``whiten=True``: a within-group covariance to use instead of the
    batch's (e.g. a running estimate from :func:`within_group_covariance`; treated as a
    constant). A batch of n rows estimates the small eigenvalues of S poorly when D is not much
    smaller than n, which forces a large ``shrinkage``; but the attribute can sit exactly in those
    low-variance directions, which a large ridge hides (``docs/experiments/fairness.md``).
    """
    keep = target >= 0
    if int(keep.sum()) < 2:
        return z.sum() * 0.0
    x = z[keep].float()
    t = target[keep]
    w = torch.ones(len(t), device=x.device) if weight is None else weight[keep].to(x)
    total = w.sum().clamp_min(1e-12)
    mu = (w[:, None] * x).sum(0) / total
    var = (w[:, None] * (x - mu) ** 2).sum(0) / total
    sigma = (var + 1e-6).sqrt()
    means: list[tuple[torch.Tensor, torch.Tensor]] = []
    within = x.new_zeros(x.shape[1], x.shape[1]) if whiten and metric is None else None
    for k in range(num_values):
        wk = w * (t == k)
        mass = wk.sum()
        if float(mass) <= 0:
            continue
        mu_k = (wk[:, None] * x).sum(0) / mass
        means.append((mass, mu_k))
        if within is not None:
            xc = x - mu_k
            within = within + (wk[:, None] * xc).T @ xc
    gap = x.new_zeros(())
    if not means:  # every usable row has weight 0 (e.g. only unlabelled rows under balance)
        return z.sum() * 0.0
    if not whiten:
        for mass, mu_k in means:
            gap = gap + (mass / total) * (((mu_k - mu) / sigma) ** 2).mean()
        return gap
    d = x.shape[1]
    within = metric.detach().to(x) if metric is not None else within / total  # type: ignore[operator]
    ridge = shrinkage * within.diagonal().mean().clamp_min(1e-6)
    within = (1 - shrinkage) * within + ridge * torch.eye(d, device=x.device, dtype=x.dtype)
    diffs = torch.stack([mu_k - mu for _, mu_k in means], 1)  # (D, G)
    sol = torch.linalg.solve(within, diffs)
    shares = torch.stack([mass / total for mass, _ in means])
    return ((diffs * sol).sum(0) * shares).sum() / d


@torch.no_grad()
def within_group_covariance(
    z: torch.Tensor,
    target: torch.Tensor,
    num_values: int,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """(D, D) pooled (weighted) within-group covariance ``sum_k sum_{i in k} w_i (x_i - mu_k)
    (x_i - mu_k)^T / sum_i w_i`` of the rows with ``target >= 0``, detached (zeros if none)."""
    keep = target >= 0
    x = z[keep].detach().float()
    t = target[keep]
    out = x.new_zeros(z.shape[1], z.shape[1])
    if len(x) == 0:
        return out
    w = torch.ones(len(t), device=x.device) if weight is None else weight[keep].to(x)
    for k in range(num_values):
        wk = w * (t == k)
        mass = wk.sum()
        if float(mass) <= 0:
            continue
        xc = x - (wk[:, None] * x).sum(0) / mass
        out += (wk[:, None] * xc).T @ xc
    return out / w.sum().clamp_min(1e-12)


def class_conditional_mean_gap(
    z: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    num_values: int,
    num_classes: int,
    prior_sums: torch.Tensor | None = None,
    prior_counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised spread of the attribute groups' means *within each class* (conditional MMD).

    ``sum_c p_c * mean_k mean_d ((mu_ck,d - mubar_c,d) / sigma_d)^2`` where mu_ck is the mean of
    the rows of class c with attribute value k, mubar_c the unweighted mean of the mu_ck of class
    c (every group counts equally), sigma_d the batch standard deviation of coordinate d and p_c
    the share of classes with at least two groups (uniform). Zero exactly when, in every class,
    all groups have the same mean: the attribute is then linearly mean-independent of z given
    the class. :func:`group_mean_gap` with label balancing only zeroes the *average* of the
    per-class gaps, which leaves per-class mark directions that a single linear probe
    ``w = sum_c d_c`` still reads when the mark is independent of the class (equalised-odds
    style conditioning; Louizos et al., ICLR 2016, linear kernel; Madras et al., ICML 2018).

    Batch group means are noisy when the attribute is correlated with the class (few rows of the
    minority group per class), so ``prior_sums`` (C, K, D) and ``prior_counts`` (C, K), the
    detached, exponentially decayed sums and counts of earlier batches, are pooled in:
    ``mu_ck = (S_ck + prior_sums_ck) / (n_ck + prior_counts_ck)`` gives the value; the gradient
    is that of the current batch's mean ``S_ck / n_ck`` (earlier embeddings are constants), so
    pooling lowers the variance of the estimated gap without scaling the gradient down by
    ``n_ck / (n_ck + prior_counts_ck)`` (a moving-average estimator, as in SogCLR's u).

    z (n, D); target (n,) attribute codes in [-1, num_values); labels (n,) class codes in
    [-1, num_classes) (-1 = missing: the row is left out).
    Returns ``(gap, batch_sums (C, K, D), batch_counts (C, K))``, the last two detached, for
    the caller to fold into its running state.
    """
    keep = (target >= 0) & (labels >= 0)
    d = z.shape[1]
    x = z[keep].float()
    t, y = target[keep].long(), labels[keep].long()
    cell = y * num_values + t  # (m,) index of (class, value)
    sums = x.new_zeros(num_classes * num_values, d).index_add(0, cell, x)
    counts = x.new_zeros(num_classes * num_values).index_add(
        0, cell, torch.ones_like(t, dtype=x.dtype)
    )
    sums, counts = sums.view(num_classes, num_values, d), counts.view(num_classes, num_values)
    tot_s, tot_n = sums, counts
    if prior_sums is not None and prior_counts is not None:
        tot_s = sums + prior_sums.to(x).detach()
        tot_n = counts + prior_counts.to(x).detach()
    if len(x) < 2:
        return z.sum() * 0.0, sums.detach(), counts.detach()
    sigma = (x.var(0, unbiased=False) + 1e-6).sqrt()
    present = tot_n > 0  # (C, K)
    mu = tot_s / tot_n.clamp_min(1e-12)[..., None]
    if prior_sums is not None and prior_counts is not None:
        # value of the pooled mean, gradient of the batch mean: pooling must lower the noise of
        # the gap, not shrink each row's gradient by n / (n + prior_count)
        mu_b = sums / counts.clamp_min(1e-12)[..., None]
        mu = mu.detach() + (mu_b - mu_b.detach()) * (counts > 0)[..., None]
    n_groups = present.sum(1)  # (C,)
    bar = (mu * present[..., None]).sum(1) / n_groups.clamp_min(1)[:, None]
    dev = (((mu - bar[:, None]) / sigma) ** 2).mean(-1) * present  # (C, K)
    per_class = dev.sum(1) / n_groups.clamp_min(1)
    usable = n_groups >= 2
    if not bool(usable.any()):
        return z.sum() * 0.0, sums.detach(), counts.detach()
    gap = per_class[usable].mean()
    return gap, sums.detach(), counts.detach()


def label_balance_table(
    labels: torch.Tensor, attrs: torch.Tensor, num_classes: int, num_values: int
) -> torch.Tensor:
    """(C, K) weights ``P(a) / P(a | y)`` from class labels (n,) and attribute codes (n,).

    Weighting each labelled sample by ``table[y, a]`` makes the attribute independent of the
    class in the weighted data (the weighted joint is ``P(y) P(a)``), so a discriminator cannot
    predict the attribute from class information. Rows with a missing label or attribute (< 0)
    are ignored; cells never observed get weight 0 (they never occur in training).
    """
    labels, attrs = torch.as_tensor(labels).long(), torch.as_tensor(attrs).long()
    keep = (labels >= 0) & (attrs >= 0)
    if bool((labels[keep] >= num_classes).any()) or bool((attrs[keep] >= num_values).any()):
        raise DataError("label or attribute codes exceed the declared numbers of values")
    counts = torch.zeros(num_classes, num_values, dtype=torch.float64)
    ones = torch.ones(int(keep.sum()), dtype=torch.float64)
    counts.index_put_((labels[keep], attrs[keep]), ones, accumulate=True)
    total = counts.sum()
    if total == 0:
        raise DataError("no sample has both a class label and an attribute; cannot balance")
    p_a = counts.sum(0) / total
    p_a_given_y = counts / counts.sum(1, keepdim=True).clamp_min(1.0)
    table = torch.where(counts > 0, p_a[None, :] / p_a_given_y.clamp_min(1e-12), 0.0)
    return table.float()
