"""The ``data`` section: what to train and evaluate on."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from debiascl.config.sections.base import Section
from debiascl.errors import ConfigError

_IMAGE_FILES = frozenset({"manifest", "image_folder"})
#: dataset-specific keys -> the built-in datasets that read them. Another built-in dataset
#: ignores the key, so a value other than the default is an error there (registered plug-in
#: datasets are not checked: they may read any key).
DATASET_KEYS: dict[str, frozenset[str]] = {
    **{
        key: frozenset({"manifest"})
        for key in (
            "manifest",
            "id_column",
        )  # not attribute_columns: fairness terms take their attribute names from it
    },
    # shards: an optional test manifest read with these columns
    **{
        key: frozenset({"manifest", "shards"})
        for key in ("test_manifest", "image_column", "text_column", "label_column")
    },
    "shards": frozenset({"shards"}),
    "test_shards": frozenset({"shards"}),
    "root": frozenset({"fashion_mnist", "image_folder", "synthetic_attr", "tinted_fashion_mnist"}),
    "on_bad_image": _IMAGE_FILES,
    "high_bit_scaling": _IMAGE_FILES,
    **{
        key: frozenset({"synthetic_attr"})
        for key in ("synthetic_correlation", "synthetic_test_correlation", "synthetic_style")
    },
}
BUILTIN_DATASETS = frozenset(
    {
        "fashion_mnist",
        "digits",
        "manifest",
        "image_folder",
        "synthetic_attr",
        "tinted_fashion_mnist",
        "shards",
    }
)


class DataConfig(Section):
    """What to train and evaluate on (built in ``debiascl.compose.build_data``)."""

    dataset: str = Field(
        "fashion_mnist",
        description="a name registered in debiascl.registry.DATASETS (built-in: fashion_mnist, "
        "digits, manifest, image_folder, synthetic_attr, tinted_fashion_mnist, shards); checked "
        "when the data is built",
    )
    mode: Literal["image_image", "image_text"] = "image_image"
    root: str | None = Field(
        None,
        description="data directory: Fashion-MNIST IDX folder (default the Debian location) or "
        "the image_folder root (with train/ and test/ subfolders, or class folders directly)",
    )
    manifest: str | None = Field(None, description="CSV/Parquet manifest for dataset=manifest")
    test_manifest: str | None = Field(None, description="test manifest (vocabularies from train)")
    shards: str | None = Field(
        None,
        description="dataset=shards: webdataset .tar shards streamed for training, a folder "
        "indexed by `python -m debiascl.data.shards index DIR` or a brace pattern of its shards",
    )
    test_shards: str | None = Field(
        None, description="dataset=shards: the test split's shards (read into memory; small)"
    )
    image_column: str = "path"
    text_column: str = Field("text", description="caption/report column (image_text mode)")
    label_column: str | None = Field("label", description="class column; null if unlabelled")
    attribute_columns: list[str] = Field(default_factory=list)
    id_column: str | None = Field(None, description="sample-id column (default: row order)")
    train_size: int | None = Field(
        None, ge=1, description="use a seeded class-stratified subset of N training samples"
    )
    test_size: int | None = Field(
        None, ge=1, description="use a seeded class-stratified subset of N test samples"
    )
    subset_seed: int | None = Field(
        None,
        description="seed of the train_size/test_size subsets (default: the run seed for the "
        "training subset and 0 for the test subset, so every run is tested on the same samples)",
    )
    validation_size: int | None = Field(
        None,
        ge=1,
        description="hold out N class-stratified training samples (fixed seed, disjoint from the "
        "training subset) and evaluate on them instead of the test split: choose settings here, "
        "never on test",
    )
    classes: list[str | int] = Field(
        default_factory=list,
        description="keep only these classes (names or label indices) in both splits, relabelled "
        "0..k-1 in this order (e.g. [t-shirt, trouser, pullover] for a 3-class regime); applied "
        "before train_size/test_size",
    )
    subsample_classes: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="controlled imbalance: training classes to keep only a fraction of (after "
        "train_size; the test split is untouched)",
    )
    subsample_fraction: float = Field(
        1.0, gt=0, le=1, description="share of each subsample_classes class kept (seeded)"
    )
    image_size: int = Field(28, ge=8)
    channels: Literal[1, 3] = 1
    caption_templates: Literal["default", "single", "skewed"] = "default"
    side_captions: bool = Field(
        False,
        description="image_image mode: attach caption templates to the training samples as side "
        "evidence for text_sim, text diagnostics and start_rule text_agreement (the model sees "
        "images only; image_text mode always has captions)",
    )
    num_workers: int = Field(0, ge=0)
    augment: Literal["simclr", "light", "none"] | None = Field(
        None,
        description="augmentation strength (default simclr for image_image, light for image_text)",
    )
    blur: bool = Field(False, description="add random Gaussian blur to the simclr augmentation")
    on_bad_image: Literal["error", "skip"] = "error"
    # dataset=synthetic_attr (SYNTHETIC attribute on Fashion-MNIST, debiascl.data.synthetic_attr)
    synthetic_correlation: float = Field(
        0.9, ge=0, le=1, description="synthetic_attr: P(mark | even class) in the training split"
    )
    synthetic_test_correlation: float = Field(
        0.5,
        ge=0,
        le=1,
        description="synthetic_attr: the same for the test split (0.5: independent)",
    )
    synthetic_style: Literal["border", "tint"] = Field(
        "border", description="synthetic_attr: how the mark is drawn (bright frame or tint)"
    )
    high_bit_scaling: Literal["dtype", "minmax"] = Field(
        "dtype",
        description="how 16-bit images become 8-bit: divide by the type's range, or per-image "
        "min-max (for 12-bit values stored in 16 bits)",
    )

    @model_validator(mode="after")
    def _keys_of_another_dataset(self, info: ValidationInfo) -> DataConfig:
        """A dataset-specific key changed for a built-in dataset that never reads it is an error.

        ``info.context["saved_data"]``: a saved run's ``data`` mapping; keys it holds with the
        same value are not checked, so a run saved before this check still loads.
        """
        if self.dataset not in BUILTIN_DATASETS:
            return self
        saved: dict[str, Any] = (info.context or {}).get("saved_data") or {}
        for key, owners in DATASET_KEYS.items():
            value = getattr(self, key)
            if self.dataset in owners or (key in saved and saved[key] == value):
                continue
            if value != type(self).model_fields[key].get_default(call_default_factory=True):
                names = " or ".join(f"data.dataset={name}" for name in sorted(owners))
                raise ConfigError(
                    f"data.{key} is only read with {names} (now: {self.dataset}); remove it or "
                    "pick that dataset"
                )
        return self
