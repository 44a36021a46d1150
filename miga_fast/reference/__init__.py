"""Plain-PyTorch implementations of every op: the oracle for tests and the last fallback."""
from . import projection, ssim

__all__ = ["projection", "ssim"]
