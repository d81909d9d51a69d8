"""GloFND's per-id threshold update on the host (CPU tensors), in numpy.

After the two (A, M) passes of a step, GloFND's update is about thirty operations on (G,)
vectors (pool the counts, the gradient, Adam, the first-visit selects, the packed rows). On the
CPU each torch op costs a few microseconds of dispatch, more than its arithmetic; numpy's ufuncs
cost well under one. :func:`host_threshold_update` runs the same IEEE float32 operations in the
same order as the torch path of :meth:`GloFNDDetector.update
<debiascl.negatives.glofnd.GloFNDDetector.update>` (``+ - * /`` are correctly rounded in both;
the square root and the bias corrections' powers still come from torch, on tensors of the same
shape, as torch's CPU ``sqrt`` is not always correctly rounded), so it returns the same bits
(``tests/test_glofnd_host_update.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from debiascl.negatives.thresholds import ThresholdRule


def host_threshold_update(
    rule: ThresholdRule,
    alpha: float,
    binomial: bool,
    two_views: bool,
    rows: torch.Tensor,
    lam: torch.Tensor,
    above: torch.Tensor,
    total: torch.Tensor,
    first: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new_lam, new_rows)`` of GloFND's update for CPU float32 inputs.

    Args:
        rule: the update rule (optimizer, init, lr, betas, eps).
        alpha: target fraction (a float; per-id fractions take the torch path).
        binomial: ``moment_init="binomial"`` (moments used without bias correction, and a first
            visit sets v = alpha (1 - alpha) / n).
        two_views: the anchor rows are ``[ids; ids]`` (pool row i with row i + G); otherwise one
            row per id.
        rows: (G, 4) stored ``(lambda, m, v, visits)`` of the batch's ids.
        lam: (G,) thresholds to step from (``rows[:, 0]`` with first visits' batch quantiles).
        above, total: (A,) float32 counts of negatives above lambda and of negatives, per row.
        first: (G,) bool first visits, or None when the batch has none.

    Returns:
        (G,) float32 new thresholds and the (G, 4) float32 rows to store.
    """
    f32 = np.float32
    stored = rows.numpy()
    m, v, visits = stored[:, 1], stored[:, 2], stored[:, 3]
    lam_np, above_np, total_np = lam.numpy(), above.numpy(), total.numpy()
    if two_views:
        g = lam_np.shape[0]
        above_np, total_np = above_np[:g] + above_np[g:], total_np[:g] + total_np[g:]
    n = np.maximum(total_np, f32(1.0))
    grad = f32(alpha) - above_np / n
    if rule.optimizer == "sgd":
        new_lam = np.clip(lam_np - f32(rule.lr) * grad, f32(-1.0), f32(1.0))
        new_m, new_v = m, v
    else:
        step = np.maximum(visits if rule.init == "batch_quantile" else visits + f32(1.0), f32(1.0))
        new_m = f32(rule.beta1) * m + f32(1.0 - rule.beta1) * grad
        new_v = f32(rule.beta2) * v + f32(1.0 - rule.beta2) * grad * grad
        if binomial:
            m_hat, v_hat = new_m, new_v
        else:
            step_t = torch.from_numpy(np.ascontiguousarray(step))
            m_hat = new_m / (f32(1.0) - torch.pow(rule.beta1, step_t).numpy())
            v_hat = new_v / (f32(1.0) - torch.pow(rule.beta2, step_t).numpy())
        # torch's CPU sqrt is not always the correctly rounded one numpy's is: take torch's
        root = torch.from_numpy(np.ascontiguousarray(v_hat)).sqrt().numpy()
        new_lam = lam_np - f32(rule.lr) * m_hat / (root + f32(rule.eps))
        new_lam = np.clip(new_lam, f32(-1.0), f32(1.0))
    if first is not None:
        # the initialising visit takes no gradient step (see GloFNDDetector.update)
        first_np = first.numpy()
        new_lam = np.where(first_np, lam_np, new_lam)
        new_m = np.where(first_np, m, new_m)
        # torch evaluates float / tensor as reciprocal(tensor) * float
        init_v = np.reciprocal(n) * f32(alpha * (1.0 - alpha)) if binomial else v
        new_v = np.where(first_np, init_v, new_v)
    out = np.stack([new_lam, new_m, new_v, visits + f32(1.0)], axis=1)
    return torch.from_numpy(np.ascontiguousarray(out[:, 0])), torch.from_numpy(out)
