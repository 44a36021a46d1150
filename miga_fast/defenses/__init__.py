"""Input-transformation defenses that the attacks are evaluated against (as the MIGA paper's
Figure 5 does): feature squeezing, non-local means, and diffusion purification
(miga_fast.purify, re-exported here). Each maps images [B, C, H, W] in [0, 1] to images
in [0, 1]; in an evaluation they sit in front of the classifier (on the denoiser's output).
BPDA and EOT (adaptive.py) let an attack differentiate through them."""

from ..purify import HeterogeneousPurifier, UniformPurifier
from .adaptive import BPDA, EOT
from .transforms import FeatureSqueeze, NonLocalMeans

__all__ = ["FeatureSqueeze", "NonLocalMeans", "UniformPurifier", "HeterogeneousPurifier", "BPDA", "EOT"]
