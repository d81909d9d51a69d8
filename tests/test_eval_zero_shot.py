"""Zero-shot prompt ensembles, scores, accuracy and one-vs-rest AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from debiascl.errors import ConfigError, DataError
from debiascl.eval import (
    class_embeddings,
    one_vs_rest_auc,
    zero_shot_accuracy,
    zero_shot_eval,
    zero_shot_scores,
)


class FakeTextEncoder:
    """Deterministic string -> vector map (a seeded vector per string), recording its calls."""

    def __init__(self, dim=6):
        self.dim = dim
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(text))
        return np.random.default_rng(seed).standard_normal(self.dim) * (1 + len(text) % 3)

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        return torch.tensor(np.stack([self.vector(p) for p in prompts]), dtype=torch.float32)


def test_class_embeddings_are_normalised_prompt_means():
    enc = FakeTextEncoder()
    names = ["sneaker", "ankle boot", "bag"]
    templates = ["a photo of a {}.", "a black-and-white picture of a {}.", "{}"]
    out = class_embeddings(enc, names, templates)
    assert out.shape == (3, 6)
    for c, name in enumerate(names):
        vecs = [enc.vector(t.format(name)) for t in templates]
        mean = np.mean([v / np.linalg.norm(v) for v in vecs], axis=0)
        np.testing.assert_allclose(out[c].numpy(), mean / np.linalg.norm(mean), atol=1e-6)
    assert enc.calls[0] == [t.format("sneaker") for t in templates]
    assert not out.requires_grad


def test_class_embeddings_input_errors():
    enc = FakeTextEncoder()
    with pytest.raises(ConfigError, match="placeholder"):
        class_embeddings(enc, ["a"], ["no placeholder"])
    with pytest.raises(DataError):
        class_embeddings(enc, [], ["{}"])
    with pytest.raises(DataError, match="encode_text"):
        class_embeddings(lambda p: torch.zeros(len(p) + 1, 3), ["a"], ["{}"])


def test_scores_are_scaled_cosines():
    rng = np.random.default_rng(0)
    img, cls = rng.standard_normal((7, 5)), rng.standard_normal((3, 5))
    ref = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in cls] for a in img])
    out = zero_shot_scores(img, cls, logit_scale=14.3)
    np.testing.assert_allclose(out.numpy(), 14.3 * ref, rtol=1e-12)


def test_accuracy_on_constructed_embeddings():
    rng = np.random.default_rng(1)
    n_classes, n = 5, 200
    class_emb = np.eye(n_classes)
    labels = rng.integers(0, n_classes, n)
    target = labels.copy()
    wrong = rng.random(n) < 0.3  # these images point at another class
    target[wrong] = (labels[wrong] + rng.integers(1, n_classes, wrong.sum())) % n_classes
    images = class_emb[target] * rng.uniform(0.5, 3, (n, 1)) + 0.01 * rng.standard_normal(
        (n, n_classes)
    )
    scores = zero_shot_scores(torch.tensor(images), torch.tensor(class_emb), 100.0)
    assert zero_shot_accuracy(scores, labels) == pytest.approx(1 - wrong.mean())
    assert zero_shot_accuracy(scores, target) == 1.0


def mann_whitney_auc(pos_scores, neg_scores):
    """P(score of a positive > score of a negative), ties count 1/2 (float64 loops)."""
    total = 0.0
    for p in pos_scores:
        for q in neg_scores:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos_scores) * len(neg_scores))


def test_auc_matches_sklearn_and_a_plain_reference():
    rng = np.random.default_rng(2)
    n, c = 120, 4
    labels = rng.integers(0, c, n)
    logits = rng.standard_normal((n, c)) + 1.5 * np.eye(c)[labels]
    logits[:10, 0] = logits[10:20, 0]  # exact ties
    probs = torch.tensor(logits).softmax(1).numpy()
    out = one_vs_rest_auc(probs, labels, class_names=["a", "b", "c", "d"])
    assert out["skipped"] == []
    for k, name in enumerate("abcd"):
        ref = mann_whitney_auc(probs[labels == k, k], probs[labels != k, k])
        assert out["per_class"][name] == pytest.approx(ref, abs=1e-12)
        assert out["per_class"][name] == pytest.approx(roc_auc_score(labels == k, probs[:, k]))
    sk_macro = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert out["macro"] == pytest.approx(sk_macro)


def test_auc_skips_classes_without_positives():
    rng = np.random.default_rng(3)
    labels = rng.choice([0, 1, 3], 80)
    scores = rng.standard_normal((80, 4))
    with pytest.warns(UserWarning, match="no AUC"):
        out = one_vs_rest_auc(scores, labels)
    assert out["skipped"] == ["2"]
    assert set(out["per_class"]) == {"0", "1", "3"}
    assert out["macro"] == pytest.approx(np.mean(list(out["per_class"].values())))


def test_auc_rejects_out_of_range_labels():
    with pytest.raises(DataError, match="labels"):
        one_vs_rest_auc(np.zeros((4, 2)), np.array([0, 1, 2, 1]))


def test_zero_shot_eval_combines_accuracy_and_auc():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 60)
    cls = rng.standard_normal((3, 8))
    img = cls[labels] + 0.8 * rng.standard_normal((60, 8))
    out = zero_shot_eval(img, labels, cls, logit_scale=10.0, class_names=["x", "y", "z"])
    scores = zero_shot_scores(img, cls, 10.0)
    assert out["accuracy"] == zero_shot_accuracy(scores, labels)
    probs = scores.softmax(1).numpy()
    assert out["auc_macro"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert set(out["auc_per_class"]) == {"x", "y", "z"}
