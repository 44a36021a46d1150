"""Triton kernels, one module per op family; installed as miga_fast.triton_kernels.
Importing registers the `torch.ops.miga_fast_triton.*` custom ops (for CUDA tensors, and
for CPU tensors under TRITON_INTERPRET=1)."""

from . import mine, projection, sampler, ssim

__all__ = ["mine", "projection", "sampler", "ssim"]
