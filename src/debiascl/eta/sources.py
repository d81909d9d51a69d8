"""Per-sample false-negative rates eta (tau+) for DCL/HCL/SSD, one value per sample id.

Sources:
- ``constant``: the same eta for every sample (DCL, Chuang et al. 2020).
- ``ssd_mlm``: SSD's estimator eta = a * p_LM(text)^k = a * exp(k * PLL(text)) with the
  pseudo-log-likelihood under a local masked LM (Wang et al., MLHC 2023; a = 0.2, k = 0.35).
- ``corpus_lm``: the same formula with log p(text) from an n-gram model fitted on the training
  texts (:mod:`debiascl.eta.ngram`), for when no masked LM is available.
- ``class_frequency``: the oracle eta_True of the SSD paper, the share of the sample's class in the
  dataset, n_c / n (needs labels; for analysis and controlled studies).

Text sources cache log p (not eta) on disk keyed by text (:mod:`debiascl.eta.cache`), so a and k
can change without rescoring. Tables are float32 (N,) with NaN for ids that have no text/label;
the loss raises if such an id reaches it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from debiascl.errors import ConfigError, DataError
from debiascl.eta.cache import TextValueCache, corpus_fingerprint
from debiascl.eta.ngram import NGramLM

log = logging.getLogger(__name__)

SOURCES = ("constant", "ssd_mlm", "corpus_lm", "class_frequency")


def lm_eta(log_prob: torch.Tensor | np.ndarray, a: float = 0.2, k: float = 0.35) -> torch.Tensor:
    """SSD's eta = a * p^k = a * exp(k * log p), elementwise, as float64.

    Args:
        log_prob: natural-log (pseudo-)likelihoods, any shape; NaN stays NaN.
        a: scale, in [0, 1).
        k: exponent, > 0.
    """
    if not 0 <= a < 1:
        raise ConfigError(f"SSD scale a must lie in [0, 1) so that eta < 1, got {a}")
    if not k > 0:
        raise ConfigError(f"SSD exponent k must be > 0, got {k}")
    lp = torch.as_tensor(np.asarray(log_prob, dtype=np.float64))
    if bool((lp > 1e-9).any()):
        raise DataError("log-probabilities must be <= 0; got a positive value")
    return a * torch.exp(k * lp.clamp(max=0.0))


def class_frequency_eta(labels: torch.Tensor) -> torch.Tensor:
    """(N,) float64 share of each sample's class among the labelled samples: n_c / n.

    Labels < 0 mean "unknown" and get NaN (they are not counted in n).
    """
    labels = torch.as_tensor(labels).long().reshape(-1)
    known = labels >= 0
    if not bool(known.any()):
        raise DataError("class_frequency eta needs labels, but no sample has a label >= 0")
    counts = torch.bincount(labels[known])
    n = int(known.sum())
    out = torch.full(labels.shape, float("nan"), dtype=torch.float64)
    out[known] = counts[labels[known]].double() / n
    if bool((out[known] >= 1).any()):
        raise DataError(
            "class_frequency eta is 1 for a class holding every labelled sample; DCL needs eta < 1 "
            "(use at least two classes)"
        )
    return out


@dataclass
class EtaSpec:
    """What eta table to build (mirrors the settings of ``loss.dcl``/``hcl``/``ssd``).

    ``settings``: where these settings sit in a run config (named in error messages).
    """

    source: str = "constant"
    eta: float = 0.1
    a: float = 0.2
    k: float = 0.35
    mlm_path: str | None = None
    mlm_batch_size: int = 32
    mlm_max_length: int = 128
    mlm_device: str = "cpu"
    ngram_order: int = 2
    cache_dir: str | Path | None = None
    cache_readonly: bool = False
    progress: bool = True
    settings: str = "loss.ssd"


def _texts_for(
    texts: Sequence[str | None] | None, num_samples: int, source: str, settings: str
) -> list[int]:
    if texts is None:
        raise ConfigError(
            f"eta source {source!r} scores each sample's text, but the dataset has no texts; use "
            f"image-text data or {settings}.eta_source=constant/class_frequency"
        )
    if len(texts) != num_samples:
        raise DataError(
            f"the dataset lists {len(texts)} texts for {num_samples} sample ids; give one text "
            f"(or None) per sample id"
        )
    return [i for i, t in enumerate(texts) if t is not None]


def text_log_probs(spec: EtaSpec, texts: Sequence[str]) -> np.ndarray:
    """(n,) float64 log p of ``texts`` under the spec's text source, through the disk cache."""
    if spec.source == "ssd_mlm":
        from debiascl.eta.pll import load_masked_lm, model_fingerprint, pseudo_log_likelihood

        if spec.mlm_path is None:
            raise ConfigError(
                f"eta source ssd_mlm needs {spec.settings}.mlm_path, a local masked LM folder "
                f"(e.g. CXR-BERT); without one use {spec.settings}.eta_source=corpus_lm"
            )
        if not (Path(spec.mlm_path).expanduser() / "config.json").is_file():
            raise ConfigError(
                f"no masked language model at {spec.mlm_path} (config.json missing); set "
                f"{spec.settings}.mlm_path to a local folder saved with save_pretrained"
            )
        params = {**model_fingerprint(spec.mlm_path), "max_length": spec.mlm_max_length}
        cache = TextValueCache(spec.cache_dir, "mlm_pll", params)

        def compute(todo: list[str]) -> list[float]:
            model, tokenizer = load_masked_lm(spec.mlm_path, spec.mlm_device)
            return pseudo_log_likelihood(
                todo,
                model,
                tokenizer,
                batch_size=spec.mlm_batch_size,
                max_length=spec.mlm_max_length,
                progress=spec.progress,
            ).tolist()

    elif spec.source == "corpus_lm":
        params = {"order": spec.ngram_order, "corpus": corpus_fingerprint(texts)}
        cache = TextValueCache(spec.cache_dir, "corpus_ngram", params)

        def compute(todo: list[str]) -> list[float]:
            return NGramLM(spec.ngram_order).fit(texts).log_probs(todo).tolist()

    else:
        raise ConfigError(f"eta source {spec.source!r} does not score texts")
    if spec.cache_readonly:
        return cache.lookup(texts)
    values = cache.get_or_compute(texts, compute)
    log.info(
        "eta %s: %d distinct texts cached, %d computed (%s)",
        spec.source,
        cache.hits,
        cache.misses,
        cache.path or "memory only",
    )
    return values


def build_eta_table(
    spec: EtaSpec,
    num_samples: int,
    texts: Sequence[str | None] | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """(num_samples,) float32 eta per sample id; NaN where the id has no text or label.

    Args:
        spec: source and its parameters.
        num_samples: size of the id space N.
        texts: text of each id (``None`` for ids without one), for the text sources.
        labels: (N,) labels (< 0 unknown), for ``class_frequency``.
    """
    if spec.source not in SOURCES:
        raise ConfigError(f"unknown eta source {spec.source!r}; choose one of {', '.join(SOURCES)}")
    if spec.source == "constant":
        if not 0 <= spec.eta < 1:
            raise ConfigError(f"eta must lie in [0, 1), got {spec.eta}")
        return torch.full((num_samples,), spec.eta, dtype=torch.float32)
    if spec.source == "class_frequency":
        if labels is None:
            raise ConfigError(
                "eta source class_frequency needs labels (DatasetInfo.labels); use a labelled "
                "dataset or another eta source"
            )
        if labels.numel() != num_samples:
            raise DataError(
                f"labels hold {labels.numel()} entries for {num_samples} sample ids; give one "
                f"label (or -1) per id"
            )
        return class_frequency_eta(labels).float()
    present = _texts_for(texts, num_samples, spec.source, spec.settings)
    assert texts is not None
    log_p = text_log_probs(spec, [str(texts[i]) for i in present])
    table = torch.full((num_samples,), float("nan"), dtype=torch.float64)
    table[torch.tensor(present, dtype=torch.long)] = lm_eta(log_p, spec.a, spec.k)
    return table.float()
