"""A token n-gram language model fitted on the training corpus itself (SSD without a masked LM).

When no pretrained masked LM of the domain is at hand, log p(text) can come from a model of the
training captions/reports themselves: an interpolated absolute-discounting n-gram model (Ney,
Essen & Kneser 1994) over lower-cased word and punctuation tokens, backing off to an add-one
unigram model that reserves mass for unseen words (``<unk>``)::

    p_n(w | h) = max(c(h, w) - d, 0) / c(h) + d * T(h) / c(h) * p_{n-1}(w | h')   if c(h) > 0
               = p_{n-1}(w | h')                                                  otherwise
    p_1(w)     = (c(w) + 1) / (total + |V| + 1)

with c counts, T(h) the number of distinct followers of context h, h' the context shortened by one
token, and every text padded with n-1 ``<s>`` and one ``</s>``. It is a normalised left-to-right
likelihood, log p(text) = sum_i log p(w_i | w_{i-n+1..i-1}) (natural log).

How this differs from the paper's estimator (see docs/debiased.md): it is fitted *on the texts it
scores*, so it measures frequency inside this dataset (a text repeated 100 times is likely because
it is repeated), not how stereotyped the sentence is in the domain at large; and it is a true
joint likelihood, not a pseudo-likelihood, so its values sit on another scale and the paper's
a = 0.2, k = 0.35 are not calibrated for it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from debiascl.errors import ConfigError

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
_TOKEN = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    return _TOKEN.findall(text.lower())


class NGramLM:
    """Interpolated absolute-discounting n-gram model with an add-one unigram base.

    Args:
        order: n (1 = unigram, 2 = bigram, ...).
        discount: absolute discount d in (0, 1].
    """

    def __init__(self, order: int = 2, discount: float = 0.75) -> None:
        if order < 1:
            raise ConfigError(f"n-gram order must be >= 1, got {order}")
        if not 0 < discount <= 1:
            raise ConfigError(f"n-gram discount must lie in (0, 1], got {discount}")
        self.order = order
        self.discount = discount
        # counts[k][context] -> Counter of next tokens, context of length k (k = 1 .. order-1).
        self.counts: list[dict[tuple[str, ...], Counter[str]]] = []
        self.unigram: Counter[str] = Counter()
        self.total = 0

    def fit(self, texts: Iterable[str]) -> NGramLM:
        """Count n-grams over ``texts`` (repeats count: frequency is the signal)."""
        self.counts = [defaultdict(Counter) for _ in range(self.order)]
        self.unigram = Counter()
        for text in texts:
            seq = [BOS] * (self.order - 1) + tokenize(text) + [EOS]
            for i in range(self.order - 1, len(seq)):
                word = seq[i]
                self.unigram[word] += 1
                for k in range(1, self.order):
                    self.counts[k][tuple(seq[i - k : i])][word] += 1
        self.total = sum(self.unigram.values())
        return self

    @property
    def vocab(self) -> list[str]:
        """Tokens with non-zero probability mass of their own: seen words, ``</s>``, ``<unk>``."""
        return sorted(set(self.unigram) | {EOS, UNK})

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        """p(word | context); ``context`` is the preceding tokens (only the last n-1 are used)."""
        if word not in self.unigram and word != EOS:
            word = UNK
        size = len(self.unigram) + (0 if EOS in self.unigram else 1) + 1  # seen + </s> + <unk>
        p = (self.unigram.get(word, 0) + 1) / (self.total + size)
        ctx = tuple(context)[-(self.order - 1) :] if self.order > 1 else ()
        for k in range(1, self.order):
            if len(ctx) < k:
                break
            followers = self.counts[k].get(ctx[-k:])
            if not followers:
                continue
            c_h = sum(followers.values())
            p = (
                max(followers.get(word, 0) - self.discount, 0.0) / c_h
                + self.discount * len(followers) / c_h * p
            )
        return p

    def log_prob(self, text: str) -> float:
        """Natural-log probability of the whole text, end-of-text token included."""
        if self.total == 0:
            raise ConfigError("the n-gram model is not fitted; call fit(texts) first")
        seq = [BOS] * (self.order - 1) + tokenize(text) + [EOS]
        return sum(
            math.log(self.prob(seq[i], seq[max(0, i - self.order + 1) : i]))
            for i in range(self.order - 1, len(seq))
        )

    def log_probs(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) float64 log p of each text."""
        return np.array([self.log_prob(t) for t in texts], dtype=np.float64)
