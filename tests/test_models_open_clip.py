"""Whole CLIP models from open_clip: a tiny architecture registered with open_clip, a checkpoint
saved by open_clip itself, towers that match open_clip's, and fine-tuning with debiascl's losses,
detector and fairness term (one process and torchrun with 2 gloo processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from debiascl.compose import build_model  # noqa: E402
from debiascl.config import load_config  # noqa: E402
from debiascl.errors import ConfigError  # noqa: E402
from debiascl.train.trainer import Trainer  # noqa: E402

ARCH = "debiascl-tiny-clip"
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
TEXTS = ["a photo of a shoe", "a photo of a shirt", "a bag", "a photo of a coat"]


def register_tiny(folder: Path) -> None:
    """Write the tiny architecture's JSON and register it with open_clip (idempotent)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{ARCH}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(str(folder))


def save_tiny(folder: Path) -> tuple[Path, Path]:
    """(checkpoint file, local-dir folder) of a seeded tiny CLIP, both saved with open_clip's
    own formats (a state dict for load_checkpoint; open_clip_config.json + safetensors)."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    register_tiny(folder / "configs")
    torch.manual_seed(0)
    clip = open_clip.create_model(ARCH)
    with torch.no_grad():
        clip.logit_scale.fill_(2.5)  # a "trained" value, not the init
    ckpt = folder / "tiny.pt"
    torch.save({"state_dict": clip.state_dict()}, ckpt)
    local = folder / "local"
    local.mkdir()
    save_file(
        {k: v.contiguous() for k, v in clip.state_dict().items()},
        str(local / "open_clip_model.safetensors"),
    )
    save_config_for_hf(clip, local / "open_clip_config.json", model_config=TINY)
    return ckpt, local


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny(tmp_path_factory.mktemp("open_clip"))


def _model_overrides(ckpt: Path) -> list[str]:
    return [
        f"model.encoder=open_clip:{ARCH}",
        f"model.weights={ckpt}",
        "model.text_encoder=open_clip",
        "model.embed_dim=16",
    ]


def _normalised(u: torch.Tensor, clip) -> torch.Tensor:
    pre = open_clip.get_model_preprocess_cfg(clip)
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    return (u - mean) / std


@pytest.mark.parametrize("source", ["checkpoint", "local-dir"])
def test_towers_equal_open_clip(tiny, source) -> None:
    ckpt, local = tiny
    overrides = (
        _model_overrides(ckpt)
        if source == "checkpoint"
        else [
            f"model.encoder=open_clip:local-dir:{local}",
            "model.text_encoder=open_clip",
            "model.embed_dim=16",
        ]
    )
    cfg = load_config("digits_clip", overrides)
    model = build_model(cfg.model, "image_text", 3).eval()
    clip = open_clip.create_model(ARCH, pretrained=str(ckpt)).eval()
    tokenizer = open_clip.get_tokenizer(ARCH)
    u = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image((u - 0.5) / 0.5), clip.encode_image(_normalised(u, clip))
        )
        torch.testing.assert_close(model.encode_text(TEXTS), clip.encode_text(tokenizer(TEXTS)))
    assert model.checkpoint_logit_scale == pytest.approx(torch.tensor(2.5).exp().item())
    names = {n for n, _ in model.named_parameters()}
    assert not any("logit_scale" in n for n in names)  # the loss owns the temperature


def test_open_clip_config_errors(tiny, tmp_path) -> None:
    ckpt, _ = tiny
    with pytest.raises(ConfigError, match="set model.text_encoder=open_clip"):
        build_model(load_config("digits_clip", _model_overrides(ckpt)[:2]).model, "image_text", 3)
    wrong_dim = [*_model_overrides(ckpt)[:3], "model.embed_dim=32"]
    with pytest.raises(ConfigError, match="set model.embed_dim=16"):
        build_model(load_config("digits_clip", wrong_dim).model, "image_text", 3)
    with pytest.raises(ConfigError, match="no architecture 'nope'"):
        cfg = load_config(
            "digits_clip", ["model.encoder=open_clip:nope", "model.text_encoder=open_clip"]
        )
        build_model(cfg.model, "image_text", 3)
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, tmp_path / "bad.pt")
    bad = [
        f"model.encoder=open_clip:{ARCH}",
        f"model.weights={tmp_path / 'bad.pt'}",
        "model.text_encoder=open_clip",
    ]
    with pytest.raises(ConfigError, match="does not fit architecture"):
        build_model(load_config("digits_clip", bad).model, "image_text", 3)


def finetune_overrides(ckpt: Path, run_dir: Path) -> list[str]:
    return [
        *_model_overrides(ckpt),
        "data.train_size=32",
        "data.test_size=32",
        "data.channels=3",
        "train.batch_size=16",
        "train.max_steps=2",
        "train.epochs=1",
        "train.threads=1",
        "optim.lr=0.01",
        "optim.warmup_epochs=0",
        "fairness.terms=[{name: adversary, hidden_dim: 8}]",
        f"output_dir={run_dir.parent}",
        f"name={run_dir.name}",
    ]


METHODS = {
    "infonce": ["fairness.terms=[]", "loss.temperature=0.2", "loss.learn_temperature=true"],
    "sogclr+glofnd": [
        "fairness.terms=[]",
        "loss.name=sogclr",
        "loss.learn_temperature=false",
        "loss.temperature=0.1",
        "negatives.name=glofnd",
        "negatives.glofnd.init=batch_quantile",
        "negatives.alpha=0.2",
    ],
    "infonce+fairness": ["loss.learn_temperature=false", "loss.temperature=0.1"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_finetune_two_steps_changes_both_towers(tiny, tmp_path, method) -> None:
    ckpt, _ = tiny
    cfg = load_config(
        "synth_attr_adfair", finetune_overrides(ckpt, tmp_path / "run") + METHODS[method]
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    scale0 = float(trainer.objective.loss_fn.scale().detach())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit(evaluate=False)
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("encoder.visual.") for n in moved)
    assert any(n.startswith("text_encoder.clip.transformer.") for n in moved)
    assert "text_encoder.clip.token_embedding.weight" in moved
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2 and torch.isfinite(torch.tensor(record["loss"]))
    scale1 = float(trainer.objective.loss_fn.scale().detach())
    if method == "infonce":
        assert scale1 != scale0  # the learned temperature trains too
    if method == "sogclr+glofnd":
        assert "negatives/removed_fraction" in record
    if method == "infonce+fairness":
        assert any(k.startswith("adv/") for k in record), sorted(record)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_gloo_processes_finetune_open_clip(tiny, tmp_path) -> None:
    """open_clip:local-dir (no registration needed in the workers) with SogCLR + GloFND and the
    fairness term under DDP; both towers move and the checkpoint is written once."""
    _, local = tiny
    run = tmp_path / "ddp"
    overrides = [
        f"model.encoder=open_clip:local-dir:{local}",
        *finetune_overrides(Path("unused"), run)[2:],  # without encoder and weights
        *METHODS["sogclr+glofnd"][1:],
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "debiascl.cli", "train", "synth_attr_adfair", "--run-dir", str(run), "--no-eval",
        *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(sorted((run / "checkpoints").glob("epoch*.pt"))[-1], weights_only=False)
    assert state["step"] == 2
    from safetensors.torch import load_file

    init = load_file(str(local / "open_clip_model.safetensors"))
    trained = state["model"]
    assert not torch.equal(trained["encoder.visual.conv1.weight"], init["visual.conv1.weight"])
    assert not torch.equal(
        trained["text_encoder.clip.token_embedding.weight"], init["token_embedding.weight"]
    )
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(k.startswith("adv/") for k in record) and "negatives/removed_fraction" in record


def test_image_image_mode_uses_the_clip_image_tower_with_a_projection_head(tiny) -> None:
    ckpt, _ = tiny
    cfg = load_config("digits_simclr", [*_model_overrides(ckpt), "model.embed_dim=8"])
    model = build_model(cfg.model, "image_image", 3).eval()
    clip = open_clip.create_model(ARCH, pretrained=str(ckpt)).eval()
    u = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            model.features((u - 0.5) / 0.5), clip.encode_image(_normalised(u, clip))
        )
        assert model((u - 0.5) / 0.5).shape == (4, 8)
    with pytest.raises(ConfigError, match="needs model.encoder=open_clip"):
        build_model(
            load_config("digits_clip", ["model.text_encoder=open_clip"]).model, "image_text", 1
        )
