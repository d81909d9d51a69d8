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


def __getattr__(name: str) -> object:
    # ImportError (not AttributeError) so that `from ... import` shows where it went
    if name == "build_model":  # moved with the other config readers
        raise ImportError(
            "debiascl.models.build_model moved to debiascl.compose.build_model (it reads the "
            "model config); create_model here takes plain arguments"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
