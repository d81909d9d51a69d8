"""Pure loss functions: tensors in, tensor out. No state, no collectives.

- :mod:`.infonce`: InfoNCE / NT-Xent / CLIP with an optional keep-mask over negatives.
- :mod:`.global_contrastive`: SogCLR's surrogate and objective given per-sample estimates u.
- :mod:`.debiased`: DCL / HCL / SSD with a scalar or per-anchor false-negative rate eta.
"""

from debiascl.losses.debiased import dcl_loss, debiased_info_nce, hcl_loss
from debiascl.losses.global_contrastive import sogclr_objective, sogclr_surrogate
from debiascl.losses.infonce import clip_loss, masked_info_nce, nt_xent

__all__ = [
    "clip_loss",
    "dcl_loss",
    "debiased_info_nce",
    "hcl_loss",
    "masked_info_nce",
    "nt_xent",
    "sogclr_objective",
    "sogclr_surrogate",
]
