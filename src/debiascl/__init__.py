"""debiascl: debiased contrastive learning (false negatives and fairness) for PyTorch."""

__version__ = "0.1.0"
