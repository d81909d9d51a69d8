"""What loss and detector builders may know about the training data (indexed by sample id)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class DatasetInfo:
    """Per-sample facts a method may need at build time.

    Attributes:
        num_samples: size N of the sample-id space; ids lie in [0, N).
        texts: caption/report of each sample id (image-text data), else None.
        labels: (N,) int64 class label per sample id when known (oracle eta, diagnostics), else
            None. Never used by an unsupervised loss unless the user asks for an oracle.
        class_names: names of the classes, when known.
    """

    num_samples: int
    texts: Sequence[str] | None = None
    labels: torch.Tensor | None = None
    class_names: Sequence[str] | None = None
