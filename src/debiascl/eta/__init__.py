"""Per-sample false-negative rates (eta, tau+) for the debiased losses: sources, cache, diagnostics.

Heavy dependencies (transformers) load only when the masked-LM source is used
(:mod:`debiascl.eta.pll`).
"""

from debiascl.eta.cache import TextValueCache, corpus_fingerprint, text_key
from debiascl.eta.ngram import NGramLM
from debiascl.eta.sources import (
    SOURCES,
    EtaSpec,
    build_eta_table,
    class_frequency_eta,
    lm_eta,
    text_log_probs,
)
from debiascl.eta.summary import eta_summary, text_counts

__all__ = [
    "SOURCES",
    "EtaSpec",
    "NGramLM",
    "TextValueCache",
    "build_eta_table",
    "class_frequency_eta",
    "corpus_fingerprint",
    "eta_summary",
    "lm_eta",
    "text_counts",
    "text_key",
    "text_log_probs",
]
