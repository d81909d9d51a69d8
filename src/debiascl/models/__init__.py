"""Image encoders, projection heads, text encoders and the two model layouts."""

from debiascl.models.build import build_model
from debiascl.models.clip import SimCLRModel, TwoTowerModel
from debiascl.models.encoders import SmallCNN, build_image_encoder
from debiascl.models.heads import projection_head

__all__ = [
    "SimCLRModel",
    "SmallCNN",
    "TwoTowerModel",
    "build_image_encoder",
    "build_model",
    "projection_head",
]
