"""Plain-PyTorch implementations of every op: the oracle for tests and the last fallback."""

from . import mine, projection, sampler, ssim

__all__ = ["mine", "projection", "sampler", "ssim"]
