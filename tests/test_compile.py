"""compile_denoiser: the compiled forward and backward match eager; a failing compiler
falls back to eager with a warning instead of killing the attack."""

import pytest
import torch

import miga_fast
from miga_fast.compile import compile_denoiser
from miga_fast.models import DnCNN, UNetDenoiser

from conftest import replay_in_cuda_graph


@pytest.mark.parametrize("make", [lambda: DnCNN(1, 4, 8), lambda: UNetDenoiser(1, 8)])
def test_compiled_forward_and_input_gradient_match_eager(make, rng):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand((4, 1, 16, 16), generator=rng)
    torch._dynamo.reset()
    compiled = compile_denoiser(model)
    outs, grads = [], []
    for m in (model, compiled):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (g,) = torch.autograd.grad(y.pow(2).sum(), xi)
        outs.append(y.detach())
        grads.append(g)
    assert compiled.compiled and compiled.fallback_reason is None
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def _broken_backend(gm, example_inputs):
    raise RuntimeError("this compiler is broken")


def test_falls_back_to_eager_when_compilation_fails():
    torch._dynamo.reset()
    model = DnCNN(1, 3, 4).eval()
    compiled = compile_denoiser(model, backend=_broken_backend)
    x = torch.rand(2, 1, 8, 8)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        y = compiled(x)
    assert torch.equal(y, model(x)) and not compiled.compiled
    assert "broken" in compiled.fallback_reason


def test_errors_of_the_model_itself_still_raise():
    torch._dynamo.reset()
    compiled = compile_denoiser(DnCNN(1, 3, 4))
    with pytest.raises(RuntimeError):
        compiled(torch.rand(2, 3, 8, 8))  # wrong channel count


def test_bad_arguments():
    with pytest.raises(TypeError, match="`model`"):
        compile_denoiser(lambda x: x)
    with pytest.raises(ValueError, match="`mode`"):
        compile_denoiser(DnCNN(), mode="fastest")


def test_first_call_of_every_op_family_inside_fullgraph_compile(tmp_path):
    """The backend probe (a dispatcher query, done once per op) must not break the graph
    when an op's first call in the process is inside torch.compile(fullgraph=True): a
    fresh interpreter, no eager call before."""
    import subprocess
    import sys

    code = """
import torch, miga_fast
from miga_fast import ops
x = torch.rand(2, 3, 16, 16); g = torch.randn_like(x); u = torch.randn(6, 4); w = torch.randn(4)
def f(d, m, g, x):
    ops.pgd_step_(d, g, x, 0.03, 0.01, "linf")
    ops.pgd_step_(d, g, x, 0.5, 0.1, "l2")
    ops.pgd_step_linf_image_(m, g, x, 0.03, 0.01)
    ops.mi_fgsm_step_(d, m, g, x, 0.03, 0.01)
    ops.project_(d, x, 0.03)
    s = ops.ssim(x, (x + d).clamp(0, 1))
    return s, ops.mine_bound(u, u + 1, torch.zeros(4), w, torch.zeros(()))
d = torch.zeros_like(x)
s, b = torch.compile(f, fullgraph=True)(d, torch.zeros_like(x), g, x)
d2 = torch.zeros_like(x)
s2, b2 = f(d2, torch.zeros_like(x), g, x)
torch.testing.assert_close(d, d2); torch.testing.assert_close(s, s2); torch.testing.assert_close(b, b2)
print("ok")
"""
    # -P and a neutral working directory: the installed package, not the source tree
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_compiled_attack_step_has_no_graph_break_and_no_recompile_across_batches(rng):
    """The attack's compiled loss (denoiser and classifier, forward and backward) with the
    fused update: one graph with no break, reused by a second batch of the same shape
    (a recompile would raise); trainable weights are frozen during the attack (their
    gradients would be computed and dropped) and handed back as they were."""
    from torch._dynamo.utils import counters

    from miga_fast.attacks import MIGA
    from miga_fast.models.classifiers import SmallCNN

    torch.manual_seed(0)
    D, F = DnCNN(3, 4, 8).eval(), SmallCNN(3, 10, 8).eval()
    F.head[-1].weight.requires_grad_(False)  # one frozen by the caller: stays frozen
    torch._dynamo.reset()
    counters.clear()
    attack = MIGA(D, F, eps=8 / 255, steps=3, compile=True)
    x = torch.rand(2, 4, 3, 16, 16, generator=rng)
    y = torch.randint(0, 10, (2, 4), generator=rng)
    first = attack(x[0], y[0])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1 and not counters["graph_break"], dict(counters["graph_break"])
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = attack(x[1], y[1])
    assert counters["stats"]["unique_graphs"] == graphs and not counters["graph_break"]
    assert attack.compile and attack.denoiser.compiled
    assert first.losses and second.losses
    assert F.head[-1].weight.requires_grad is False
    assert all(p.requires_grad for n, p in F.named_parameters() if n != "head.2.weight")
    assert all(p.requires_grad for p in D.parameters())


def test_miga_fast_caches_do_not_make_compiled_graphs_recompile(rng):
    """The backend choice is read around miga_fast's caches while torch.compile traces:
    a compiled graph guards on the selected backend only, so eager calls that fill the
    caches (another dtype, another backend) do not recompile it, and coming back to a
    backend reuses its graph."""
    from miga_fast import ops

    x = torch.rand(2, 3, 8, 8, generator=rng)
    g = torch.randn(2, 3, 8, 8, generator=rng)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(d):
        ops.pgd_step_(d, g, x, 0.03, 0.01, "l2")
        return d + 0

    torch._dynamo.reset()
    compiled = torch.compile(f, backend=record, fullgraph=True)
    with miga_fast.set_backend("auto"):
        compiled(torch.zeros_like(x))
    for backend in ("reference", "auto"):  # eager calls that fill the caches
        with miga_fast.set_backend(backend):
            ops.pgd_step_(torch.zeros_like(x).double(), g.double(), x.double(), 0.03, 0.01, "l2")
    with miga_fast.set_backend("reference"):
        compiled(torch.zeros_like(x))
    with miga_fast.set_backend("auto"):
        compiled(torch.zeros_like(x))
    assert len(graphs) == 2  # one per backend, none for the caches


def _every_public_op(rng, device="cpu"):
    """(name, function of fresh tensors -> outputs) for every op of miga_fast.ops, with
    inputs drawn once (on the CPU generator, then moved to `device`): in-place ops act on
    a copy they return."""
    from miga_fast import ops

    x = torch.rand(2, 3, 24, 24, generator=rng)
    y = (x + 0.1 * torch.randn(x.shape, generator=rng)).clamp(0, 1)
    g = torch.randn(x.shape, generator=rng)
    eps = torch.tensor([4 / 255, 8 / 255])
    u, v = torch.randn(6, 5, generator=rng), torch.randn(6, 5, generator=rng)
    b1, w2, b2 = torch.randn(5, generator=rng), torch.randn(5, generator=rng), torch.zeros(())
    mask = (torch.rand(2, 1, 24, 24, generator=rng) > 0.5).float().expand_as(x)
    n1, n2 = torch.randn(x.shape, generator=rng), torch.randn(x.shape, generator=rng)
    a = torch.tensor([0.5, 0.6])
    x, y, g, eps, u, v, b1, w2, b2, mask, n1, n2, a = (
        t.to(device) for t in (x, y, g, eps, u, v, b1, w2, b2, mask, n1, n2, a)
    )

    def inplace(fn):
        def run():
            d = 0.01 * g.clone()
            fn(d)
            return d

        return run

    def mi_fgsm():
        d, m = torch.zeros_like(x), torch.zeros_like(x)
        ops.mi_fgsm_step_(d, m, g, x, eps, 2 / 255, 1.0)
        return d, m

    return [
        ("pgd_step_ linf", inplace(lambda d: ops.pgd_step_(d, g, x, eps, 2 / 255, "linf"))),
        ("pgd_step_ l2", inplace(lambda d: ops.pgd_step_(d, g, x, 0.5, 0.1, "l2"))),
        (
            "pgd_step_linf_image_",
            inplace(lambda d: ops.pgd_step_linf_image_(d.abs_().clamp_(0, 1), g, x, eps, 2 / 255)),
        ),
        ("mi_fgsm_step_", mi_fgsm),
        ("project_", inplace(lambda d: ops.project_(d, x, eps))),
        ("ssim", lambda: ops.ssim(x, y)),
        ("ssim cs_only", lambda: ops.ssim(x, y, cs_only=True)),
        ("ssim_per_channel", lambda: ops.ssim_per_channel(x, y, win_size=7)),
        ("ms_ssim", lambda: ops.ms_ssim(x, y, win_size=3, weights=[0.5, 0.5])),
        ("ssim_ball_scale", lambda: ops.ssim_ball_scale(g, x, 0.9)),
        ("ssim_ball_project_", inplace(lambda d: ops.ssim_ball_project_(d, x, 0.9))),
        ("ssim_window_ball_project_", inplace(lambda d: ops.ssim_window_ball_project_(d, x, 0.95))),
        ("mine_pair_scores", lambda: ops.mine_pair_scores(u, v, b1, w2, b2)),
        ("mine_terms", lambda: ops.mine_terms(u, v, b1, w2, b2)),
        ("mine_bound", lambda: ops.mine_bound(u, v, b1, w2, b2)),
        ("heterogeneous_noise", lambda: ops.heterogeneous_noise(x, mask, 0.3, 0.9, n1, n2)),
        ("ddim_step", lambda: ops.ddim_step(x, g, a, a + 0.2)),
        ("inpaint_combine", lambda: ops.inpaint_combine(x, y, mask, 0.7, noise=n1)),
        ("resample_forward", lambda: ops.resample_forward(x, a + 0.2, a, noise=n1)),
        (
            "sampler_step",
            lambda: ops.sampler_step(
                x, mode="ddim", eps=g, a_from=a, a_to=a + 0.2, mask=mask, known=y, a_known=0.7, noise_known=n1
            ),
        ),
    ]


def test_every_public_op_compiles_fullgraph_and_matches_eager(rng):
    """Each op of miga_fast.ops alone under torch.compile(fullgraph=True): no graph break
    (fullgraph raises on one), the same outputs as eager."""
    from torch._dynamo.utils import counters

    for name, fn in _every_public_op(rng):
        torch._dynamo.reset()
        counters.clear()
        eager = fn()
        compiled = torch.compile(fn, fullgraph=True)()
        assert not counters["graph_break"], (name, dict(counters["graph_break"]))
        torch.testing.assert_close(compiled, eager, msg=lambda m, name=name: f"{name}: {m}")


def test_the_integrations_steps_compile_fullgraph(rng):
    """The drop-ins' per-step work traces whole (the gradient taken outside, as the attacks
    do): MS-SSIM as a loss (the pytorch-msssim drop-in, its module too) with its backward
    through the compiled graph, and torchattacks' fused step (ball, box) on a gradient."""
    from miga_fast import ops
    from miga_fast.integrations.pytorch_msssim import MS_SSIM, ms_ssim

    x = torch.rand(2, 3, 40, 40, generator=rng)
    y = (x + 0.1 * torch.randn(x.shape, generator=rng)).clamp(0, 1)
    module = MS_SSIM(data_range=1, win_size=3, channel=3)

    def grad_of(loss_fn):
        a = x.clone().requires_grad_()
        return torch.autograd.grad(loss_fn(a), a)[0]

    for loss in (lambda a: 1 - ms_ssim(a, y, data_range=1, win_size=3), lambda a: 1 - module(a, y)):
        torch._dynamo.reset()
        torch.testing.assert_close(grad_of(torch.compile(loss, fullgraph=True)), grad_of(loss))

    def step(delta, grad):
        ops.pgd_step_(delta, grad, x, 8 / 255, 2 / 255, "linf")
        return delta

    g = torch.randn(x.shape, generator=rng)
    torch.testing.assert_close(
        torch.compile(step, fullgraph=True)(torch.zeros_like(x), g), step(torch.zeros_like(x), g)
    )


@pytest.mark.skipif(
    not (torch.cuda.is_available() and miga_fast.backends()["cuda"]["runs_here"]),
    reason="needs a GPU and the CUDA build",
)
def test_every_public_op_captures_in_a_cuda_graph(rng):
    """No host synchronisation in any op on CUDA tensors (value checks off, as inside the
    attacks' loops): each captures in a CUDA graph and replays to the eager result."""
    for name, fn in _every_public_op(rng, "cuda"):
        with miga_fast.value_checks(False):
            want = fn()
            out = replay_in_cuda_graph(fn)
        torch.testing.assert_close(out, want, msg=lambda m, name=name: f"{name}: {m}")
