"""Pure loss functions: tensors in, tensor out. No state, no collectives."""

from debiascl.losses.infonce import clip_loss, masked_info_nce, nt_xent

__all__ = ["clip_loss", "masked_info_nce", "nt_xent"]
