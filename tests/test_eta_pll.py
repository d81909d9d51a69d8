"""Pseudo-log-likelihood on a tiny random BERT built in the test (no download)."""

from __future__ import annotations

import math

import pytest
import torch

from debiascl.errors import ConfigError, DataError
from debiascl.eta import EtaSpec, build_eta_table, text_log_probs
from debiascl.eta.pll import load_masked_lm, pseudo_log_likelihood

transformers = pytest.importorskip("transformers")

WORDS = [
    "no",
    "acute",
    "process",
    "small",
    "left",
    "right",
    "effusion",
    "normal",
    "heart",
    "size",
    "the",
    "is",
    "lungs",
    "are",
    "clear",
    ".",
]
TEXTS = [
    "No acute process.",
    "the heart size is normal.",
    "No acute process.",
    "small left effusion.",
    "lungs are clear.",
    "right",
    "",
]


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = transformers.BertForMaskedLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def direct_pll(text, model, tokenizer):
    """Token by token: mask position i of the unpadded sequence, read log P(original token)."""
    ids = tokenizer(text)["input_ids"]
    total = 0.0
    for i in range(1, len(ids) - 1):  # skip [CLS] and [SEP]
        masked = list(ids)
        masked[i] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([masked])).logits[0, i]
        total += float(torch.log_softmax(logits.double(), dim=-1)[ids[i]])
    return total


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_batched_pll_matches_direct(tiny_mlm, batch_size):
    _, model, tokenizer = tiny_mlm
    model.train()  # the function must switch dropout off and restore the mode
    got = pseudo_log_likelihood(TEXTS, model, tokenizer, batch_size=batch_size)
    assert model.training
    model.eval()
    expected = torch.tensor([direct_pll(t, model, tokenizer) for t in TEXTS], dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == (len(TEXTS),)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got[0] == got[2]  # repeated text, scored once
    assert got[-1] == 0.0  # no scorable token
    assert (got[:-1] < 0).all()


def test_truncation_drops_tokens(tiny_mlm):
    _, model, tokenizer = tiny_mlm
    full = pseudo_log_likelihood(["the heart size is normal."], model, tokenizer)
    cut = pseudo_log_likelihood(["the heart size is normal."], model, tokenizer, max_length=4)
    # max_length 4 keeps [CLS] the heart [SEP]: only two scored tokens
    ids = tokenizer("the heart")["input_ids"]
    assert len(ids) == 4
    assert not torch.allclose(full, cut)
    assert math.isfinite(float(cut[0]))


def test_load_and_cache_through_eta_table(tiny_mlm, tmp_path):
    folder, model, tokenizer = tiny_mlm
    loaded, tok = load_masked_lm(folder)
    assert not loaded.training and tok.mask_token_id == tokenizer.mask_token_id
    cache = tmp_path / "cache"
    spec = EtaSpec(
        source="ssd_mlm", mlm_path=str(folder), cache_dir=cache, mlm_batch_size=7, progress=False
    )
    texts = TEXTS[:6]
    table = build_eta_table(spec, 7, texts=[*texts, None])
    direct = [direct_pll(t, model, tokenizer) for t in texts]
    expected = torch.tensor([0.2 * math.exp(0.35 * x) for x in direct], dtype=torch.float32)
    torch.testing.assert_close(table[:6], expected, rtol=1e-5, atol=1e-7)
    assert torch.isnan(table[6])
    files = list(cache.glob("mlm_pll-*.json"))
    assert len(files) == 1
    # read-only: reordered texts come from the cache; a new text is a clear error
    ro = EtaSpec(source="ssd_mlm", mlm_path=str(folder), cache_dir=cache, cache_readonly=True)
    back = text_log_probs(ro, list(reversed(texts)))
    torch.testing.assert_close(
        torch.tensor(back), torch.tensor(direct[::-1], dtype=torch.float64), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(DataError, match="has no cached mlm_pll value"):
        text_log_probs(ro, ["lungs are normal."])
    # other a, k reuse the cached log-probabilities
    spec2 = EtaSpec(
        source="ssd_mlm", mlm_path=str(folder), cache_dir=cache, cache_readonly=True, a=0.1, k=1.0
    )
    table2 = build_eta_table(spec2, 6, texts=texts)
    torch.testing.assert_close(
        table2,
        torch.tensor([0.1 * math.exp(x) for x in direct], dtype=torch.float32),
        rtol=1e-5,
        atol=1e-7,
    )


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json missing"):
        load_masked_lm(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="cannot load"):
        load_masked_lm(tmp_path)
