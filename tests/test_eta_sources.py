"""Eta sources: the corpus n-gram model, class frequency, the SSD formula, tables, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from debiascl.errors import ConfigError, DataError
from debiascl.eta import (
    EtaSpec,
    NGramLM,
    build_eta_table,
    class_frequency_eta,
    eta_summary,
    lm_eta,
    text_counts,
)
from debiascl.eta.ngram import EOS, UNK, tokenize

CORPUS = ["a b", "a c", "a b b", "c a ."]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ngram_is_normalised(order):
    lm = NGramLM(order).fit(CORPUS)
    for ctx in [(), ("a",), ("<s>", "a"), ("b", "b"), ("zzz",), ("a", "c")]:
        total = sum(lm.prob(w, ctx) for w in lm.vocab)
        assert math.isclose(total, 1.0, rel_tol=1e-12)


def test_ngram_bigram_by_hand():
    lm = NGramLM(order=2, discount=0.75).fit(["a b", "a c"])
    # unigram base: tokens a b </s> a c </s> -> total 6; vocab {a, b, c, </s>} + <unk> = 5
    p1 = {"a": 3 / 11, "b": 2 / 11, "c": 2 / 11, EOS: 3 / 11, UNK: 1 / 11}
    # context "a" was followed by b once and c once: c(h) = 2, T(h) = 2
    assert math.isclose(lm.prob("b", ["a"]), 0.25 / 2 + 0.75 * 2 / 2 * p1["b"])
    assert math.isclose(lm.prob("a", ["a"]), 0.75 * 2 / 2 * p1["a"])
    assert math.isclose(lm.prob("zebra", ["a"]), 0.75 * p1[UNK])
    # log p("a b") = log p(a|<s>) + log p(b|a) + log p(</s>|b); <s> was followed by a twice
    p_a = (2 - 0.75) / 2 + 0.75 * 1 / 2 * p1["a"]
    p_b = 0.25 / 2 + 0.75 * p1["b"]
    p_end = (1 - 0.75) / 1 + 0.75 * 1 / 1 * p1[EOS]
    assert math.isclose(lm.log_prob("a b"), math.log(p_a) + math.log(p_b) + math.log(p_end))


def test_ngram_repeats_raise_probability_and_tokenizer():
    corpus = ["no acute process."] * 5 + ["small left effusion."]
    lm = NGramLM(2).fit(corpus)
    assert lm.log_prob("no acute process.") > lm.log_prob("small left effusion.")
    assert tokenize("No  acute, PROCESS.") == ["no", "acute", ",", "process", "."]
    with pytest.raises(ConfigError):
        NGramLM(0)
    with pytest.raises(ConfigError, match="not fitted"):
        NGramLM(2).log_prob("x")


def test_class_frequency_eta_against_loop():
    labels = torch.tensor([2, 0, 2, -1, 1, 2, 0])
    eta = class_frequency_eta(labels)
    known = [x for x in labels.tolist() if x >= 0]
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            assert math.isnan(float(eta[i]))
        else:
            assert math.isclose(float(eta[i]), known.count(y) / len(known))
    with pytest.raises(DataError, match="two classes"):
        class_frequency_eta(torch.tensor([1, 1, -1]))


def test_lm_eta_formula_and_errors():
    lp = np.array([0.0, -1.0, -20.0])
    eta = lm_eta(lp, a=0.2, k=0.35)
    expected = [0.2 * math.exp(0.35 * x) for x in lp]
    np.testing.assert_allclose(eta.numpy(), expected, rtol=1e-12)
    with pytest.raises(ConfigError):
        lm_eta(lp, a=1.0)
    with pytest.raises(DataError):
        lm_eta(np.array([0.5]))


def test_build_table_constant_and_errors(tmp_path):
    assert torch.equal(build_eta_table(EtaSpec(eta=0.05), 3), torch.full((3,), 0.05))
    with pytest.raises(ConfigError, match="unknown eta source"):
        build_eta_table(EtaSpec(source="nope"), 3)
    with pytest.raises(DataError, match="2 texts for 3 sample ids"):
        build_eta_table(EtaSpec(source="corpus_lm", cache_dir=tmp_path), 3, texts=["a", "b"])
    with pytest.raises(DataError, match="one label"):
        build_eta_table(EtaSpec(source="class_frequency"), 3, labels=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="mlm_path"):
        build_eta_table(EtaSpec(source="ssd_mlm"), 1, texts=["a"])
    with pytest.raises(ConfigError, match=r"config\.json missing"):
        build_eta_table(EtaSpec(source="ssd_mlm", mlm_path=str(tmp_path)), 1, texts=["a"])


def test_corpus_table_survives_reordering_and_readonly_errors(tmp_path):
    texts = ["x y", "x y", "z", None, "x w"]
    spec = EtaSpec(source="corpus_lm", cache_dir=tmp_path, progress=False)
    table = build_eta_table(spec, 5, texts=texts)
    assert torch.isnan(table[3]) and not torch.isnan(table[[0, 1, 2, 4]]).any()
    order = [4, 2, 0, 3, 1]
    ro = EtaSpec(source="corpus_lm", cache_dir=tmp_path, cache_readonly=True)
    shuffled = build_eta_table(ro, 5, texts=[texts[i] for i in order])
    torch.testing.assert_close(shuffled, table[order], equal_nan=True)
    with pytest.raises(DataError, match="no cached"):
        # a changed corpus has another fingerprint, so nothing is cached for it
        build_eta_table(ro, 2, texts=["x y", "q"])


def spearman_naive(x, y):
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy)


def test_summary_histogram_and_spearman():
    texts = ["a", "a", "a", "b", "b", "c", None, "d"]
    eta = torch.tensor([0.3, 0.3, 0.3, 0.1, 0.2, 0.05, float("nan"), 0.01])
    out = eta_summary(eta, texts, bins=4)
    assert out["count"] == 7 and out["missing"] == 1 and out["distinct_texts"] == 4
    assert sum(out["histogram"]["counts"]) == 7 and len(out["histogram"]["edges"]) == 5
    assert math.isclose(out["mean"], float(eta[~torch.isnan(eta)].double().mean()), rel_tol=1e-6)
    counts = text_counts(texts)
    assert counts.tolist()[:6] == [3, 3, 3, 2, 2, 1] and math.isnan(counts[6])
    keep = [0, 1, 2, 3, 4, 5, 7]
    ref = spearman_naive([float(eta[i]) for i in keep], [counts[i] for i in keep])
    assert math.isclose(out["spearman_vs_text_count"], ref, rel_tol=1e-9)
    assert math.isnan(eta_summary(torch.full((3,), 0.1), ["a", "b", "a"])["spearman_vs_text_count"])
