"""The ``loss`` section: the contrastive loss, its shared settings and each loss's own settings.

Section keys are read whatever the loss (temperature, directions, where per-sample tables live);
a loss's own hyper-parameters sit under its name, e.g. ``loss: {name: sogclr, sogclr: {gamma:
0.9}}`` (see :mod:`debiascl.config.sections.methods`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from debiascl.config.sections.methods import MethodSection, MethodSettings


class SogCLRSettings(MethodSettings):
    """``loss.sogclr`` (DESIGN 3.2): the moving-average weight of the u tables."""

    gamma: float = Field(0.9, gt=0, le=1, description="moving-average weight of u")
    gamma_schedule: Literal["constant", "cosine"] = "constant"
    gamma_min: float = Field(0.2, gt=0, le=1, description="final gamma of the cosine schedule")


class DCLSettings(MethodSettings):
    """``loss.dcl`` (DESIGN 3.4): the false-negative rate, constant or per sample."""

    eta: float = Field(0.1, ge=0, lt=1, description="constant false-negative rate tau+")
    eta_source: Literal["auto", "constant", "ssd_mlm", "corpus_lm", "class_frequency"] = Field(
        "auto",
        description="per-sample eta: auto = constant for dcl/hcl, ssd_mlm for ssd; corpus_lm = "
        "n-gram model fitted on the training texts; class_frequency = oracle n_c/n from labels",
    )
    eta_directions: Literal["both", "image_to_text", "text_to_image"] = Field(
        "both",
        description="image_text: directions whose anchors get the eta correction (others: eta 0)",
    )
    ssd_a: float = Field(0.2, ge=0, lt=1, description="SSD eta = a * p_LM(text)^k: scale a")
    ssd_k: float = Field(0.35, gt=0, description="SSD exponent k")
    mlm_path: str | None = Field(None, description="local masked-LM folder for eta_source=ssd_mlm")
    mlm_batch_size: int = Field(32, ge=1, description="masked copies per MLM forward pass")
    mlm_max_length: int = Field(128, ge=3, description="MLM truncation length (tokens)")
    mlm_device: str = Field("auto", description="device for MLM scoring: auto | cpu | cuda[:i]")
    corpus_lm_order: int = Field(2, ge=1, le=5, description="n of the corpus n-gram model")
    eta_cache_dir: str | None = Field(
        None, description="cache of text log-probabilities (default: <output_dir>/eta_cache)"
    )
    eta_cache_readonly: bool = Field(
        False, description="never compute: a text missing from the eta cache is an error"
    )


class HCLSettings(DCLSettings):
    """``loss.hcl`` / ``loss.ssd``: DCL's settings and the hardness beta."""

    beta: float = Field(0.0, ge=0, description="HCL hardness (0: DCL's weighting)")


class LossConfig(MethodSection):
    """Contrastive loss (registry ``debiascl.registry.LOSSES``) and its settings."""

    KIND = "loss"
    TYPED_SETTINGS: ClassVar[dict[str, type[MethodSettings]]] = {
        "sogclr": SogCLRSettings,
        "dcl": DCLSettings,
        "hcl": HCLSettings,
        "ssd": HCLSettings,
        "infonce": MethodSettings,
    }
    #: ``directions`` is read by the objective for every loss; ``learn_temperature`` by the
    #: composition layer, which refuses it for a loss that keeps a fixed temperature.
    ALWAYS_READ = frozenset({"name", "directions", "learn_temperature"})
    READ_WITH = {"max_logit_scale": "loss.learn_temperature=true"}  # noqa: RUF012

    def keys_read(self) -> frozenset[str] | None:
        """The shared keys the selected loss reads; ``max_logit_scale`` caps a *learned* 1/t, so
        it is read only with ``learn_temperature``."""
        read = self.keys_read_by(self.name)
        if read is None or self.learn_temperature:
            return read
        return read - {"max_logit_scale"}

    name: str = Field(
        "infonce", description="a registered loss: infonce | sogclr | dcl | hcl | ssd"
    )
    temperature: float = Field(
        0.2,
        gt=0,
        description="temperature t of the loss (logit scale 1/t); the initial value when "
        "learn_temperature. The loss is the one owner: evaluation uses the trained scale",
    )
    learn_temperature: bool = Field(
        False,
        description="learn log(1/t) as in CLIP (only losses that support it: infonce)",
    )
    max_logit_scale: float = Field(
        100.0, gt=0, description="cap on a learned 1/t, applied after each optimiser step"
    )
    directions: Literal["both", "image_to_text", "text_to_image"] = "both"
    table_placement: Literal["device", "cpu"] = Field(
        "device", description="where per-sample tables (SogCLR's u) live (cpu for large id spaces)"
    )
    table_sharding: Literal["replicated", "sharded"] = Field(
        "replicated",
        description="sharded: each rank stores only N / world_size rows of the per-sample tables "
        "and fetches the others by collectives (for 10**8-10**9 ids over many GPUs)",
    )
