"""The one table of data sets and the shipped models the application runs on them: the
demo, the SSIM-attack experiment, the `attack` command's named data sets and the
training scripts all read it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .. import data


@dataclasses.dataclass(frozen=True)
class Setup:
    """A data set (its test and train splits, class names) and, where the zoo has them,
    the shipped models for it."""

    name: str
    load: Callable  # load(split) -> (images [N, C, H, W] in [0, 1], labels [N])
    classes: tuple[str, ...]
    denoiser: str | None = None  # the demo's denoiser and classifier (the pipeline F o D)
    classifier: str | None = None
    diffusion: str | None = None  # a DDPM for the purification defense, where one fits the data
    cam_classifier: str | None = None  # the SSIM-attack experiment's classifier and its Grad-CAM layer
    cam_layer: str | None = None

    def class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)


SETUPS = {
    "natural": Setup(
        "natural",
        lambda split: data.load_natural_patches(split, 32),
        data.NATURAL_CLASSES,
        denoiser="dncnn_natural",
        classifier="resnet_natural",
        diffusion="ddpm_natural",
        cam_classifier="resnet_natural",
        cam_layer="stages.2",
    ),
    "digits": Setup(
        "digits",
        lambda split: data.load_digits(split, 32),
        tuple(str(d) for d in range(10)),
        denoiser="dncnn_digits",
        classifier="cnn_digits",
        diffusion="ddpm_digits",
        cam_classifier="resnet_digits",
        cam_layer="stages.2",
    ),
    "faces": Setup("faces", lambda split: data.load_faces(split), data.FACE_CLASSES),
}
# the names the model manifest records for the training data
DATA_ALIASES = {"natural32": "natural"}


def setup(name: str) -> Setup:
    key = DATA_ALIASES.get(name, name)
    if key not in SETUPS:
        raise ValueError(f"unknown data set {name!r}: choose from {sorted(SETUPS)}")
    return SETUPS[key]


def with_models(kind: str) -> list[str]:
    """The setups that have a model for `kind` ("classifier", "cam_classifier", ...)."""
    return [name for name, s in SETUPS.items() if getattr(s, kind) is not None]
