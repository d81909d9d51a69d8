"""Which class names and prompt templates zero-shot evaluation uses.

* ``eval.zero_shot_templates`` set: those templates, with the (readable) class name put into
  ``{}`` as it is, e.g. ``"a chest X-ray showing {}."``.
* Built-in datasets (``fashion_mnist``, ``digits``, ``synthetic_attr``), whose captions this
  library writes: the caption templates, with the class name and its article ("an ankle boot"),
  so the prompts are the training captions.
* Any other data (manifests, image folders): the dataset-neutral CLIP-style ensemble
  :data:`debiascl.eval.zero_shot.GENERIC_TEMPLATES` ("a photo of a {}." ...).

``eval.class_names`` renames the classes for prompts and output: a list in label order, or a
mapping from the data's class name (the label value as written in the manifest) to a readable
name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from debiascl.data.captions import prompt_templates, with_article
from debiascl.errors import ConfigError
from debiascl.eval.zero_shot import GENERIC_TEMPLATES

#: Datasets whose captions come from :mod:`debiascl.data.captions` templates.
CAPTIONED_BUILTINS = ("fashion_mnist", "digits", "synthetic_attr", "tinted_fashion_mnist")


@dataclass
class ZeroShotPrompts:
    """Class names shown in results, the words filled into templates, and the templates."""

    class_names: list[str]
    fill_names: list[str]
    templates: list[str]
    source: str  # "eval.zero_shot_templates" | "caption templates" | "generic"

    def describe(self) -> dict[str, object]:
        return {
            "class_names": self.class_names,
            "templates": self.templates,
            "template_source": self.source,
        }


def readable_class_names(
    data_names: Sequence[str], renamed: Sequence[str] | dict[str, str] | None
) -> list[str]:
    """``data_names`` with ``eval.class_names`` applied (underscores read as spaces)."""
    names = [str(n) for n in data_names]
    if isinstance(renamed, dict) and renamed:
        unknown = sorted(set(renamed) - set(names))
        if unknown:
            raise ConfigError(
                f"eval.class_names renames {unknown}, which are not classes of the data "
                f"({names}); use the label values as keys"
            )
        names = [renamed.get(n, n) for n in names]
    elif renamed:
        if len(renamed) != len(names):
            raise ConfigError(
                f"eval.class_names lists {len(renamed)} names but the data has {len(names)} "
                f"classes ({names}, in label order); give one name per class or a mapping"
            )
        names = [str(n) for n in renamed]
    return [n.replace("_", " ") for n in names]


def zero_shot_prompts(
    data_names: Sequence[str] | None,
    dataset: str = "",
    templates: Sequence[str] = (),
    class_names: Sequence[str] | dict[str, str] | None = None,
) -> ZeroShotPrompts | None:
    """The prompts for the data (see the module docstring); None when the classes have no names.

    Args:
        data_names: the data's class names in label order.
        dataset: the data's registered name (built-in captioned datasets use their captions).
        templates: ``eval.zero_shot_templates`` (empty: by dataset).
        class_names: ``eval.class_names`` (list in label order or mapping; empty: the data's).

    Raises:
        ConfigError: ``class_names`` does not fit the data's classes.
    """
    if not data_names:
        return None
    names = readable_class_names(data_names, class_names or None)
    if templates:
        return ZeroShotPrompts(names, names, list(templates), "eval.zero_shot_templates")
    if dataset in CAPTIONED_BUILTINS:
        filled = [with_article(n) for n in names]
        return ZeroShotPrompts(names, filled, prompt_templates(), "caption templates")
    return ZeroShotPrompts(names, names, list(GENERIC_TEMPLATES), "generic")
