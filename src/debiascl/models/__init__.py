"""Image encoders, projection heads, text encoders and the two model layouts."""

from debiascl.models.build import create_model
from debiascl.models.clip import SimCLRModel, TwoTowerModel
from debiascl.models.encoders import SmallCNN, build_image_encoder
from debiascl.models.heads import projection_head

__all__ = [
    "SimCLRModel",
    "SmallCNN",
    "TwoTowerModel",
    "build_image_encoder",
    "create_model",
    "projection_head",
]
