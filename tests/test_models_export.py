"""`debiascl export RUN_DIR --to timm|open_clip|hf -o DIR`: each export loads natively in its own
library and gives the same embeddings as the trained debiascl model (max abs diff <= 1e-5)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision

from debiascl.cli import main
from debiascl.errors import ConfigError
from debiascl.models import build_image_encoder
from debiascl.models.export import export_timm
from debiascl.train.export_run import load_trained_model

ATOL = 1e-5


def _train(run: Path, config: str, *overrides: str) -> None:
    args = ["train", config, "--run-dir", str(run), "--no-eval", "train.max_steps=2"]
    assert main([*args, "train.epochs=1", "train.threads=1", *overrides]) == 0


def _export(run: Path, to: str, out: Path) -> None:
    assert main(["export", str(run), "--to", to, "-o", str(out)]) == 0


def _unit(channels: int, size: int) -> torch.Tensor:
    return torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(3))


def _normalise(u: torch.Tensor, mean, std) -> torch.Tensor:
    return (u - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_timm_export_round_trips(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "w.pth")
    run = tmp_path / "run"
    _train(
        run,
        "digits_clip",
        "model.encoder=timm:test_efficientnet",
        f"model.weights={tmp_path / 'w.pth'}",
    )
    _, state, model = load_trained_model(run)
    out = tmp_path / "timm_export"
    _export(run, "timm", out)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    native = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert native.num_classes == 0
    cfg = timm.data.resolve_data_config({}, model=native)
    u = _unit(3, 8)
    with torch.no_grad():
        ours = model.features((u - 0.5) / 0.5)
        theirs = native(_normalise(u, cfg["mean"], cfg["std"]))
    assert (ours - theirs).abs().max() <= ATOL
    # the export holds the trained weights, not the initial file
    init = torch.load(tmp_path / "w.pth", weights_only=True)
    key = "conv_stem.weight"
    assert not torch.equal(native.state_dict()[key], init[key])
    torch.testing.assert_close(native.state_dict()[key], state["model"][f"encoder.net.{key}"])
    assert (out / "debiascl_heads.safetensors").is_file()


def test_torchvision_resnet_exports_as_timm_resnet(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r.pth")
    enc = build_image_encoder("resnet18", 1, weights=str(tmp_path / "r.pth")).eval()
    export_timm(SimpleNamespace(encoder=enc), tmp_path / "out", 32)
    native = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    cfg = timm.data.resolve_data_config({}, model=native)
    grey = _unit(1, 32)
    with torch.no_grad():
        ours = enc((grey - 0.5) / 0.5)
        theirs = native(_normalise(grey.expand(-1, 3, -1, -1), cfg["mean"], cfg["std"]))
    assert (ours - theirs).abs().max() <= ATOL
    scratch = build_image_encoder("resnet18", 1, small_image_stem=False).eval()  # 1-channel stem
    export_timm(SimpleNamespace(encoder=scratch), tmp_path / "scratch", 32)
    native = timm.create_model(f"local-dir:{tmp_path / 'scratch'}", pretrained=True).eval()
    with torch.no_grad():
        diff = scratch((grey - 0.5) / 0.5) - native(_normalise(grey, [0.5], [0.5]))
    assert diff.abs().max() <= ATOL
    small = build_image_encoder("resnet18", 1, small_image_stem=True)
    with pytest.raises(ConfigError, match="standard stem"):
        export_timm(SimpleNamespace(encoder=small), tmp_path / "x", 32)
    with pytest.raises(ConfigError, match="needs a timm"):
        export_timm(SimpleNamespace(encoder=build_image_encoder("small_cnn")), tmp_path / "y", 8)


def test_hf_export_round_trips(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from test_models_hf_text import save_tiny_bert

    bert = save_tiny_bert(tmp_path / "bert")
    run = tmp_path / "run"
    _train(
        run, "digits_clip", f"model.text_encoder=hf:{bert}", "model.text_trainable=true",
        "model.text_pooling=cls",
    )  # fmt: skip
    _, _, model = load_trained_model(run)
    out = tmp_path / "hf_export"
    _export(run, "hf", out)
    tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    native = transformers.AutoModel.from_pretrained(str(out), local_files_only=True).eval()
    texts = ["a photo of a shirt", "the small red shoe"]
    with torch.no_grad():
        ours = model.text_encoder(texts)
        theirs = native(**tok(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
        init = transformers.AutoModel.from_pretrained(bert, local_files_only=True).eval()
        before = init(**tok(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    assert (ours - theirs).abs().max() <= ATOL
    assert (before - theirs).abs().max() > 1e-4  # fine-tuned weights were exported


def test_open_clip_export_round_trips(tmp_path) -> None:
    open_clip = pytest.importorskip("open_clip")
    from test_models_open_clip import ARCH, save_tiny

    ckpt, _ = save_tiny(tmp_path / "clip")
    run = tmp_path / "run"
    _train(
        run, "digits_clip", f"model.encoder=open_clip:{ARCH}", f"model.weights={ckpt}",
        "model.text_encoder=open_clip", "model.embed_dim=16", "data.channels=3",
        "loss.learn_temperature=true",
    )  # fmt: skip
    cfg, state, model = load_trained_model(run)
    out = tmp_path / "oc_export"
    _export(run, "open_clip", out)
    native = open_clip.create_model(f"local-dir:{out}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    pre = open_clip.get_model_preprocess_cfg(native)
    u = _unit(3, 32)
    texts = ["a photo of a zero.", "a photo of a seven."]
    with torch.no_grad():
        img_diff = model.encode_image((u - 0.5) / 0.5) - native.encode_image(
            _normalise(u, pre["mean"], pre["std"])
        )
        txt_diff = model.encode_text(texts) - native.encode_text(tokenizer(texts))
    assert img_diff.abs().max() <= ATOL and txt_diff.abs().max() <= ATOL
    learned = [v for k, v in state["objective"].items() if k.endswith("log_scale")]
    assert len(learned) == 1  # the run learned its temperature
    torch.testing.assert_close(native.logit_scale.detach().reshape(()), learned[0].reshape(()))
    assert float(learned[0]) != pytest.approx(torch.tensor(1 / cfg.loss.temperature).log().item())


def test_export_errors_are_one_line(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    _train(run, "digits_clip")
    assert main(["export", str(run), "--to", "hf", "-o", str(tmp_path / "o")]) != 0
    assert "Hugging Face text tower" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--to", "timm", "-o", str(tmp_path / "o")]) != 0
    assert "not a run directory" in capsys.readouterr().err


def test_run_logit_scale_reads_the_objective_state() -> None:
    from debiascl.models.export import run_logit_scale

    cfg = SimpleNamespace(loss=SimpleNamespace(temperature=0.5))
    learned = {"objective": {"loss_fn.scale.log_scale": torch.tensor(3.0)}}
    assert run_logit_scale(cfg, learned) == pytest.approx(torch.tensor(3.0).exp().item())
    assert run_logit_scale(cfg, {"objective": {"loss_fn.scale.fixed": torch.tensor(4.0)}}) == 4.0
    assert run_logit_scale(cfg, {"objective": {}}) == 2.0
