"""Every CUDA kernel family once on small shapes, forward and backward, for
compute-sanitizer (memcheck, racecheck) in `make gpu-check`. A script, not a test module:
    compute-sanitizer --tool memcheck python tests/sanitizer_cases.py [cuda|cpu]
(`cpu` runs the same cases through the C++ kernels: how the script itself is checked on a
machine without a GPU.) Small shapes keep it within seconds under the sanitizer; they still cover partial tiles,
several blocks per sample and misaligned (odd-sized) samples. Exits 1 on a wrong result."""

import sys

import torch

import miga_fast
from miga_fast import ops
from miga_fast.reference import mine as ref_mine
from miga_fast.reference import projection as ref_proj
from miga_fast.reference import ssim as ref_ssim


def close(name, a, b, tol):
    if not torch.allclose(a, b, rtol=tol, atol=tol):
        print(f"sanitizer_cases: {name}: max difference {(a - b).abs().max().item():.3g}", file=sys.stderr)
        return False
    return True


def main(backend: str = "cuda") -> int:
    if backend == "cuda" and not miga_fast.backends()["cuda"]["runs_here"]:
        print("sanitizer_cases: needs a GPU and the CUDA build")
        return 0
    dev = torch.device("cuda" if backend == "cuda" else "cpu")
    g = torch.Generator(device="cpu").manual_seed(0)
    ok = True
    with miga_fast.set_backend(backend):
        # projection: l-inf (delta and image forms), l2 (with tiny and huge gradients), MI-FGSM, both projections
        for shape in ((3, 3, 17, 19), (2, 5001)):
            x = torch.rand(shape, generator=g).to(dev)
            d = ((torch.rand(shape, generator=g) - 0.5) * 0.1).to(dev)
            gr = torch.randn(shape, generator=g).to(dev)
            gr[0] *= 1e-40
            for norm in ("linf", "l2"):
                out = ops.pgd_step_(d.clone(), gr, x, 8 / 255, 2 / 255, norm)
                exp = ref_proj.pgd_step_(d.clone(), gr, x, 8 / 255, 2 / 255, norm)
                ok &= close(f"pgd_step_ {norm} {shape}", out, exp, 1e-5)
                out = ops.project_(d.clone(), x, 0.05, norm)
                ok &= close(f"project_ {norm} {shape}", out, ref_proj.project_(d.clone(), x, 0.05, norm), 1e-5)
            adv = (x + d).clamp(0, 1)
            out = ops.pgd_step_linf_image_(adv.clone(), gr, x, 8 / 255, 2 / 255)
            exp = ref_proj.pgd_step_linf_image_(adv.clone(), gr, x, 8 / 255, 2 / 255)
            ok &= close(f"pgd_step_linf_image_ {shape}", out, exp, 0.0)
            m = torch.zeros_like(d)
            out = ops.mi_fgsm_step_(d.clone(), m, gr, x, 8 / 255, 2 / 255)
            ok &= close(
                f"mi_fgsm_step_ {shape}",
                out,
                ref_proj.mi_fgsm_step_(d.clone(), torch.zeros_like(d), gr, x, 8 / 255, 2 / 255),
                1e-5,
            )
        # SSIM: value and fused value+gradient, both paddings; the ball and the window ball
        x = torch.rand(2, 3, 37, 41, generator=g).to(dev)
        y = (x + 0.05 * torch.randn(x.shape, generator=g).to(dev)).clamp(0, 1)
        for padding in ("valid", "same"):
            a = x.clone().requires_grad_(True)
            v = ops.ssim(a, y, padding=padding)
            (ga,) = torch.autograd.grad(v.sum(), a)
            ar = x.clone().requires_grad_(True)
            vr = ref_ssim.ssim(ar, y, padding=padding)
            (gr_,) = torch.autograd.grad(vr.sum(), ar)
            ok &= close(f"ssim {padding}", v, vr, 1e-4) & close(f"ssim grad {padding}", ga, gr_, 1e-4)
            t = ops.ssim_ball_scale(y - x, x, 0.9, padding=padding)
            ok &= bool(((t >= 0) & (t <= 1)).all())
        delta = (y - x).contiguous()
        out = ops.ssim_window_ball_project_(delta.clone(), x, 0.9)
        ok &= close("ssim_window_ball_project_", out, ref_ssim.window_ball_project_(delta.clone(), x, 0.9), 1e-4)
        # MINE: the all-pairs bound, forward and backward, B over one tile
        u, v = (torch.randn(37, 24, generator=g).to(dev).requires_grad_(True) for _ in range(2))
        b1, w2 = (0.1 * torch.randn(24, generator=g).to(dev) for _ in range(2))
        b2 = torch.zeros((), device=dev)
        out = ops.mine_bound(u, v, b1, w2, b2, activation="elu")
        gu, gv = torch.autograd.grad(out, (u, v))
        exp = ref_mine.bound(u, v, b1, w2, b2, "dv", "all", None, "elu")
        eu, ev = torch.autograd.grad(exp, (u, v))
        ok &= close("mine_bound", out, exp, 1e-4)
        ok &= close("mine grad u", gu, eu, 1e-4) & close("mine grad v", gv, ev, 1e-4)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer_cases ({backend}): " + ("all results match the references" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
