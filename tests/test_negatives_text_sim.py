"""Text-evidence detector (text_sim) and text-agreement diagnostic vs float64 references."""

from __future__ import annotations

import pytest
import torch

from debiascl.compose.text_evidence import frozen_text_embeddings, hashed_tfidf
from debiascl.errors import ConfigError, DataError
from debiascl.negatives.context import StepContext
from debiascl.negatives.text_evidence import TextAgreement, TextEvidence
from debiascl.negatives.text_sim import TextSimilarityDetector
from debiascl.pairs import clip_pairs, simclr_pairs
from fn_detector_helpers import N, batches, make_detector, text_table


def _text_sim64(anchor_ids: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
    e = text_table()
    e = e / e.norm(dim=1, keepdim=True)
    return e[anchor_ids] @ e[cand_ids].T


@pytest.mark.parametrize("mode", ["image_image", "image_text"])
def test_fixed_rule_removes_exactly_the_negatives_with_matching_text(mode):
    det = make_detector("text_fixed", mode)
    a, b, _, _, ids = next(batches(1, 12))
    batch = simclr_pairs(a, b, ids) if mode == "image_image" else clip_pairs(a, b, ids)[1]
    keep = det(batch, StepContext(epoch=0))
    sim64 = _text_sim64(batch.anchor_ids, batch.candidate_ids)
    assert torch.equal(keep, sim64 < 0.9)
    # ids i and i + 12 share a text: every such pair in the batch is removed
    twins = (batch.anchor_ids[:, None] % 12 == batch.candidate_ids[None, :] % 12) & batch.neg_mask
    assert twins.any() and not (keep & twins).any()
    # before start_epoch nothing is removed
    late = TextSimilarityDetector(N, text_table(), start_epoch=1, text_threshold=0.9)
    assert late(batch, StepContext(epoch=0)).all()


def test_glofnd_rule_first_visit_is_the_float64_quantile_of_text_similarities():
    det = make_detector("text_glofnd", "image_text")  # alpha 0.25, init batch_quantile
    a, b, _, _, ids = next(batches(1, 12))
    i2t, _ = clip_pairs(a, b, ids)
    keep = det(i2t, StepContext(epoch=0))
    sim64 = _text_sim64(i2t.anchor_ids, i2t.candidate_ids)
    for row in range(i2t.num_anchors):
        negs = sim64[row][i2t.neg_mask[row]]  # 11 negatives: position 0.25 * 10 = 2.5
        q = torch.quantile(negs, 0.75)
        lam = det.learner.thresholds("image_to_text", ids[row : row + 1])
        assert abs(float(lam) - float(q)) < 1e-6
        want = ~(sim64[row] > q)
        assert torch.equal(keep[row][i2t.neg_mask[row]], want[i2t.neg_mask[row]])


def test_text_agreement_counts_match_a_float64_reference():
    evidence = TextEvidence(text_table())
    agreement = TextAgreement(evidence, threshold=0.5)
    a, b, _, _, ids = next(batches(1, 12))
    batch = simclr_pairs(a, b, ids)
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(batch.sim.shape, generator=g) > 0.3
    agreement.update(batch, keep)
    agreement.update(batch, keep)  # counts accumulate; the ratios do not change
    sim64 = _text_sim64(batch.anchor_ids, batch.candidate_ids)
    removed = batch.neg_mask & ~keep
    agree = (sim64 >= 0.5) & batch.neg_mask
    got = agreement.compute()
    assert got["text_agreement"] == pytest.approx(float((removed & agree).sum() / removed.sum()))
    assert got["text_recall"] == pytest.approx(float((removed & agree).sum() / agree.sum()))
    agreement.reset()
    assert agreement.compute() == {}


def test_tfidf_matches_a_float64_reference_and_identical_texts_coincide():
    texts = ["a photo of a bag", "a photo of a bag", "a drawing of a shoe", "bag"]
    emb = hashed_tfidf(texts, dim=64).double()
    assert torch.equal(emb[0], emb[1])
    # "bag" (df 3 of 4): idf = log(5 / 4) + 1; "shoe" (df 1): log(5 / 2) + 1
    import zlib

    col = zlib.crc32(b"shoe") % 64
    assert float(emb[2, col]) == pytest.approx(torch.log(torch.tensor(2.5)).item() + 1, abs=1e-6)
    table = frozen_text_embeddings(["", *texts], encoder="tfidf")
    assert table.shape == (5, 4096) and float(table[0].abs().sum()) == 0.0


def test_bad_inputs_give_one_line_errors():
    with pytest.raises(ConfigError, match="text_rule"):
        TextSimilarityDetector(N, text_table(), text_rule="cosine")
    with pytest.raises(ConfigError, match=r"\(-1, 1\]"):
        TextSimilarityDetector(N, text_table(), text_threshold=1.5)
    with pytest.raises(ConfigError, match="cover 24 sample ids but the data has 30"):
        TextSimilarityDetector(30, text_table())
    with pytest.raises(DataError, match="NaN"):
        TextEvidence(torch.full((3, 2), float("nan")))
    with pytest.raises(ConfigError, match="caption"):
        frozen_text_embeddings(None)
