"""Drop-in backends for other frameworks (docs/integrations.md).

- `miga_fast.integrations.pytorch_msssim`: `ssim`, `ms_ssim`, `SSIM`, `MS_SSIM` with
  pytorch-msssim's signatures and semantics, on the fused SSIM kernels.
- `miga_fast.integrations.torchattacks`: torchattacks' PGD, PGDL2, MIFGSM, EOTPGD and APGD
  on the fused attack steps.

The modules are imported on demand (the peers need not be installed to use the first).
"""
