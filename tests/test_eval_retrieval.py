"""Image-text retrieval Recall@K against a brute-force sort."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debiascl.errors import ConfigError, DataError
from debiascl.eval import caption_group_ids, recall_at_k, retrieval_eval, retrieval_ranks


def brute_force_ranks(queries, candidates, qid, cid):
    """Position of the first correct candidate after sorting by cosine similarity (float64)."""
    ranks = []
    for i, q in enumerate(queries):
        sims = [
            (float(q @ c / np.linalg.norm(q) / np.linalg.norm(c)), j)
            for j, c in enumerate(candidates)
        ]
        order = [j for _, j in sorted(sims, key=lambda p: -p[0])]
        ranks.append(next(pos for pos, j in enumerate(order) if cid[j] == qid[i]))
    return np.array(ranks)


def paired(seed, n=50, dim=8, noise=1.0):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, dim))
    txt = img + noise * rng.standard_normal((n, dim))
    return img, txt


@pytest.mark.parametrize("max_elements", [1, 7 * 50, 1 << 24])
def test_recall_matches_brute_force(max_elements):
    img, txt = paired(0)
    ids = np.arange(50)
    out = retrieval_eval(img, txt, ks=(1, 5, 10), max_elements=max_elements)
    i2t = brute_force_ranks(img, txt, ids, ids)
    t2i = brute_force_ranks(txt, img, ids, ids)
    for k in (1, 5, 10):
        assert out["image_to_text"][f"R@{k}"] == pytest.approx(np.mean(i2t < k))
        assert out["text_to_image"][f"R@{k}"] == pytest.approx(np.mean(t2i < k))
    assert 0 < out["image_to_text"]["R@1"] < 1, "fixture should be neither trivial nor hopeless"
    np.testing.assert_array_equal(retrieval_ranks(img, txt, max_elements=max_elements), i2t)


def test_duplicated_embedding_ties_count_half_unless_grouped():
    img, _ = paired(1)
    img[5] = img[9]  # a duplicated caption: its twin ties with the ground truth
    out = retrieval_eval(torch.tensor(img), torch.tensor(img))
    for direction in out.values():  # queries 5 and 9 each hit at rank 1 with chance 1/2
        assert direction == pytest.approx({"R@1": 49 / 50, "R@5": 1.0, "R@10": 1.0})
    ids = np.arange(50)
    ids[9] = 5  # group ids make the twin a correct candidate too
    grouped = retrieval_eval(torch.tensor(img), torch.tensor(img), image_ids=ids, text_ids=ids)
    for direction in grouped.values():
        assert all(v == 1.0 for v in direction.values())


def test_group_ids_allow_several_correct_candidates():
    rng = np.random.default_rng(2)
    img = rng.standard_normal((20, 6))
    caption_of = np.repeat(np.arange(20), 3)  # 3 captions per image
    txt = img[caption_of] + 1.2 * rng.standard_normal((60, 6))
    image_ids = np.arange(20)
    out = retrieval_eval(img, txt, ks=(1, 5), image_ids=image_ids, text_ids=caption_of)
    i2t = brute_force_ranks(img, txt, image_ids, caption_of)
    t2i = brute_force_ranks(txt, img, caption_of, image_ids)
    for k in (1, 5):
        assert out["image_to_text"][f"R@{k}"] == pytest.approx(np.mean(i2t < k))
        assert out["text_to_image"][f"R@{k}"] == pytest.approx(np.mean(t2i < k))


def test_caption_groups_credit_every_image_with_the_query_caption():
    captions = [
        "a photo of a bag.",
        "a photo of a shirt.",
        "a photo of a bag.",
        "a boot.",
        "a boot.",
    ]
    ids = caption_group_ids(captions)
    assert ids.tolist() == [0, 1, 0, 2, 2]
    rng = np.random.default_rng(4)
    img = rng.standard_normal((5, 6))
    text_of_group = rng.standard_normal((3, 6))
    txt = text_of_group[ids.numpy()]  # identical captions have identical embeddings
    img[2] = txt[2] * 10 + 0.01 * img[2]  # image 2 sits on its caption, image 0 does not
    strict = retrieval_ranks(txt, img)
    grouped = retrieval_ranks(txt, img, ids, ids)
    np.testing.assert_array_equal(grouped, brute_force_ranks(txt, img, ids.numpy(), ids.numpy()))
    assert grouped[0] == 0 and strict[0] > 0, "text 0 finds image 2, which shares its caption"


def test_recall_at_k_counts_ranks_below_k():
    ranks = torch.tensor([0, 1, 4, 5, 9, 10, 30])
    out = recall_at_k(ranks, ks=(1, 5, 10))
    assert out == {"R@1": 1 / 7, "R@5": 3 / 7, "R@10": 5 / 7}
    with pytest.raises(ConfigError):
        recall_at_k(ranks, ks=(0,))


def test_bad_inputs_raise():
    img, txt = paired(3)
    with pytest.raises(DataError, match="as many queries"):
        retrieval_eval(img, txt[:-1])
    with pytest.raises(DataError, match="columns"):
        retrieval_eval(img, txt[:, :4])
    with pytest.raises(DataError, match="no correct candidate"):
        retrieval_ranks(img, txt, np.arange(50), np.arange(50) + 100)
    with pytest.raises(DataError, match="both"):
        retrieval_ranks(img, txt, query_ids=np.arange(50))
