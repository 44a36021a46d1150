"""Models: small denoisers, classifiers and a diffusion UNet, and the registry of the
checkpoints the project trained and committed. Any nn.Module works with the attacks;
the library never assumes its own zoo."""

from .classifiers import SmallCNN, SmallResNet
from .denoisers import DnCNN, UNetDenoiser
from .diffusion import DiffusionUNet, UNetOutput
from .registry import ARCHITECTURES, ModelInfo, available, build, load

__all__ = [
    "ARCHITECTURES",
    "DiffusionUNet",
    "DnCNN",
    "ModelInfo",
    "SmallCNN",
    "SmallResNet",
    "UNetDenoiser",
    "UNetOutput",
    "available",
    "build",
    "load",
]
