"""The sampler family (miga_fast.ops.sampler): every backend against the plain-PyTorch
reference, forward and backward, float64 and float32, per-sample alpha-bars, masks of one
plane or one per channel; gradcheck, opcheck, torch.compile; ddim_step against diffusers;
the same seed giving the same result everywhere; clear errors on bad input."""

import pytest
import torch

import miga_fast
from miga_fast import ops

from conftest import backend_params, replay_in_cuda_graph

BACKENDS = backend_params()


def _inputs(rng, dtype=torch.float64, shape=(3, 2, 5, 7), device="cpu", channel_mask=True):
    b = shape[0]
    x = torch.randn(shape, generator=rng, dtype=dtype).to(device)
    eps = torch.randn(shape, generator=rng, dtype=dtype).to(device)
    known = torch.rand(shape, generator=rng, dtype=dtype).to(device)
    mshape = (b, 1, *shape[2:]) if channel_mask else shape
    mask = (torch.rand(mshape, generator=rng) > 0.5).to(dtype).to(device)
    a_t = torch.linspace(0.2, 0.5, b, dtype=dtype).to(device)  # noisier
    a_prev = torch.linspace(0.4, 0.9, b, dtype=dtype).to(device)  # cleaner
    return x, eps, known, mask, a_t, a_prev


def _calls(x, eps, known, mask, a_t, a_prev):
    """(name, thunk) for every public op and the fused step, noises from fixed seeds."""
    return [
        ("ddim", lambda: ops.ddim_step(x, eps, a_t, a_prev)),
        ("ddim_float_abar", lambda: ops.ddim_step(x, eps, 0.3, 0.7)),
        ("ddim_eta_clip", lambda: ops.ddim_step(x, eps, a_t, a_prev, eta=0.7, clip=1.0, generator=1)),
        ("ddim_to_x0", lambda: ops.ddim_step(x, eps, a_t, 1.0)),
        ("inpaint", lambda: ops.inpaint_combine(x, known, mask, a_prev, generator=2)),
        ("resample", lambda: ops.resample_forward(x, a_prev, a_t, generator=3)),
        ("hetero", lambda: ops.heterogeneous_noise(known, mask, a_t, a_prev, generator=4)),
        ("hetero_two_draws", lambda: ops.heterogeneous_noise(known, mask, a_t, a_prev, noise_s=eps, generator=7)),
        (
            "fused",
            lambda: ops.sampler_step(
                x, mode="ddim", eps=eps, a_from=a_t, a_to=a_prev, mask=mask, known=known, a_jump=a_t, generator=5
            ),
        ),
        (
            "fused_eta_clip",
            lambda: ops.sampler_step(
                x,
                mode="ddim",
                eps=eps,
                a_from=a_t,
                a_to=a_prev,
                eta=1.0,
                clip=0.8,
                mask=mask,
                known=known,
                a_known=0.95,
                a_jump=a_t,
                generator=6,
            ),
        ),  # fmt: skip
    ]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,channel_mask", [((3, 2, 5, 7), True), ((2, 3, 8, 8), False), ((4, 1, 33, 31), True)])
def test_every_op_matches_the_reference(backend, device, dtype, shape, channel_mask, rng):
    inputs = _inputs(rng, dtype, shape, device, channel_mask)
    with miga_fast.set_backend("reference"):
        want = [(name, fn()) for name, fn in _calls(*inputs)]
    with miga_fast.set_backend(backend):
        got = [(name, fn()) for name, fn in _calls(*inputs)]
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=2e-6)
    for (name, w), (_, g) in zip(want, got):
        assert g.dtype == dtype and g.shape == inputs[0].shape, name
        assert torch.isfinite(g).all(), name  # the poisoned outputs were all written
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")


def _grad_cases(x, eps, known, mask, a_t, a_prev, n1, n2, n3):
    return {
        "ddim": lambda x, eps, known, n1, n2, n3: ops.ddim_step(x, eps, a_t, a_prev, eta=0.6, noise=n1),
        # clip 0.9: some x0 predictions are clipped (gradient 0 there), most are not
        "ddim_clip": lambda x, eps, known, n1, n2, n3: ops.ddim_step(x, eps, a_t, a_prev, clip=0.9),
        "inpaint": lambda x, eps, known, n1, n2, n3: ops.inpaint_combine(x, known, mask, a_prev, noise=n2),
        "resample": lambda x, eps, known, n1, n2, n3: ops.resample_forward(x, a_prev, a_t, noise=n1),
        "hetero": lambda x, eps, known, n1, n2, n3: ops.heterogeneous_noise(known, mask, a_t, a_prev, n1, n2),
        "fused": lambda x, eps, known, n1, n2, n3: ops.sampler_step(
            x,
            mode="ddim",
            eps=eps,
            a_from=a_t,
            a_to=a_prev,
            eta=0.5,
            noise=n1,
            clip=1.5,
            mask=mask,
            known=known,
            noise_known=n2,
            a_jump=a_t,
            noise_jump=n3,
        ),  # fmt: skip
    }


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", ["ddim", "ddim_clip", "inpaint", "resample", "hetero", "fused"])
def test_gradients_are_exact(backend, device, case, rng):
    """gradcheck in float64 through every differentiable input (the noises too)."""
    x, eps, known, mask, a_t, a_prev = _inputs(rng, torch.float64, (2, 2, 4, 5), device)
    noises = [torch.randn(x.shape, generator=rng, dtype=x.dtype).to(device) for _ in range(3)]
    fn = _grad_cases(x, eps, known, mask, a_t, a_prev, *noises)[case]
    leaves = [t.clone().requires_grad_(True) for t in (x, eps, known, *noises)]
    with miga_fast.set_backend(backend):
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)
        # and against the reference's autograd, in float32 too
        for dtype in (torch.float64, torch.float32):
            leaves = [t.detach().to(dtype).requires_grad_(True) for t in leaves]
            up = torch.randn(x.shape, generator=rng, dtype=dtype).to(device)
            got = torch.autograd.grad(fn(*leaves), leaves, up, allow_unused=True)
            with miga_fast.set_backend("reference"):
                want = torch.autograd.grad(fn(*leaves), leaves, up, allow_unused=True)
            for g, w in zip(got, want):
                assert (g is None) == (w is None)
                if g is not None:
                    torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_second_derivatives_go_through_the_reference(backend, device, rng):
    x, eps, known, mask, a_t, a_prev = _inputs(rng, torch.float64, (2, 1, 3, 3), device)
    leaves = [x.clone().requires_grad_(True), eps.clone().requires_grad_(True)]

    def f(xx, ee):
        y = ops.sampler_step(xx, mode="ddim", eps=ee * ee, a_from=a_t, a_to=a_prev, mask=mask, known=known,
                             noise_known=eps)  # fmt: skip
        return (y * y).sum()

    with miga_fast.set_backend(backend):
        assert torch.autograd.gradgradcheck(f, leaves, eps=1e-6, atol=1e-7)


def test_opcheck_on_the_compiled_ops(rng):
    x, eps, known, mask, a_t, a_prev = _inputs(rng, torch.float64, (2, 2, 3, 4))
    noise = torch.randn(x.shape, generator=rng, dtype=x.dtype)
    namespaces = []
    if miga_fast.backends()["cpu"]["built"]:
        namespaces.append(torch.ops.miga_fast)
    if miga_fast.backends()["triton"]["runs_here"] and not torch.cuda.is_available():
        ops.sampler._ops_for("triton")
        namespaces.append(torch.ops.miga_fast_triton)
    if not namespaces:
        pytest.skip("no compiled backend runs here")
    for ns in namespaces:
        args = (x.requires_grad_(True), eps.requires_grad_(True), known.requires_grad_(True), mask, noise, noise,
                noise, a_t, a_prev, a_prev, a_t, 2, 0.5, 1.2)  # fmt: skip
        torch.library.opcheck(ns.sampler_step, args)
        bargs = (noise, x.detach(), eps.detach(), mask, a_t, a_prev, a_prev, a_t, 2, 0.5, 1.2, True, True, False, True)
        torch.library.opcheck(ns.sampler_step_backward, bargs)


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_a_sampler_step_compiles_without_graph_breaks(backend, rng):
    """Inside torch.compile(fullgraph=True): under "auto" the step decomposes into the
    reference (fused by inductor); a named backend keeps its kernel in the graph."""
    if backend == "cpu" and not miga_fast.backends()["cpu"]["built"]:
        pytest.skip("C++ kernels not built")
    x, eps, known, mask, a_t, a_prev = _inputs(rng, torch.float32, (2, 3, 8, 8))
    noise = torch.randn(x.shape, generator=rng)

    def step(x, eps, known):
        y = ops.ddim_step(x, eps, a_t, a_prev)
        return ops.inpaint_combine(y, known, mask, a_prev, noise=noise)

    torch._dynamo.reset()
    with miga_fast.set_backend(backend), miga_fast.value_checks(False):
        compiled = torch.compile(step, fullgraph=True)
        got = compiled(x, eps, known)
        with miga_fast.set_backend("reference"):
            want = step(x, eps, known)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_the_same_seed_gives_the_same_result_on_every_backend(backend, device, rng):
    x, eps, known, mask, a_t, a_prev = _inputs(rng, torch.float64, device=device)
    with miga_fast.set_backend("reference"):
        want = ops.heterogeneous_noise(known, mask, a_t, a_prev, generator=11)
        want2 = ops.ddim_step(x, eps, a_t, a_prev, eta=1.0, generator=12)
    with miga_fast.set_backend(backend):
        got = ops.heterogeneous_noise(known, mask, a_t, a_prev, generator=11)
        got2 = ops.ddim_step(x, eps, a_t, a_prev, eta=1.0, generator=12)
        other = ops.heterogeneous_noise(known, mask, a_t, a_prev, generator=13)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got2, want2, rtol=0, atol=1e-12)
    assert not torch.allclose(other, got)


def test_heterogeneous_noise_puts_strong_noise_inside_the_mask(rng):
    """Per pixel: the forward process at t_l inside the mask and at t_s outside, so the
    masked pixels' residual x - sqrt(abar) x0 has variance 1 - abar_l, the others 1 - abar_s."""
    x0 = torch.rand(4, 3, 64, 64, generator=rng, dtype=torch.float64)
    mask = torch.zeros(4, 1, 64, 64, dtype=torch.float64)
    mask[:, :, :, :32] = 1
    al, as_ = 0.2, 0.9
    y = ops.heterogeneous_noise(x0, mask, al, as_, generator=0)
    inside = (y - al**0.5 * x0)[..., :32]
    outside = (y - as_**0.5 * x0)[..., 32:]
    assert abs(inside.var().item() - (1 - al)) < 0.03
    assert abs(outside.var().item() - (1 - as_)) < 0.005
    assert abs(inside.mean().item()) < 0.02 and abs(outside.mean().item()) < 0.01


def test_ddim_step_equals_diffusers():
    """diffusers keeps its alpha-bars in float32 and computes the coefficients there: the
    comparison is in float32, to float32's rounding."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                    set_alpha_to_one=True)  # fmt: skip
    sched.set_timesteps(50)
    x = torch.randn(2, 3, 8, 8)
    eps = torch.randn_like(x)
    noise = torch.randn_like(x)
    abar = sched.alphas_cumprod
    for t in (sched.timesteps[0], sched.timesteps[20], sched.timesteps[-1]):
        prev = int(t) - 1000 // 50
        a_t = abar[int(t)]
        a_prev = abar[prev] if prev >= 0 else torch.tensor(1.0)
        for eta in (0.0, 0.5, 1.0):
            want = sched.step(eps, t, x, eta=eta, variance_noise=noise if eta else None).prev_sample
            got = ops.ddim_step(x, eps, float(a_t), float(a_prev), eta=eta, noise=noise if eta else None)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=2e-6)
    clipped = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                                      clip_sample_range=1.0)  # fmt: skip
    clipped.set_timesteps(50)
    t = clipped.timesteps[10]
    a_t, a_prev = abar[int(t)], abar[int(t) - 20]
    want = clipped.step(eps * 3, t, x, eta=0.0).prev_sample
    got = ops.ddim_step(x, eps * 3, float(a_t), float(a_prev), clip=1.0)
    assert ((x - (1 - a_t).sqrt() * eps * 3) / a_t.sqrt()).abs().max() > 1  # the clip is active
    torch.testing.assert_close(got, want, rtol=1e-6, atol=2e-6)


# --- bad input --------------------------------------------------------------------------


def test_bad_input_gets_a_clear_error(rng):
    x, eps, known, mask, a_t, a_prev = _inputs(rng, torch.float64)
    with pytest.raises(ValueError, match="`mask` must have shape"):
        ops.inpaint_combine(x, known, mask[:, :, :3], a_prev)
    with pytest.raises(ValueError, match="only 0s and 1s"):
        ops.inpaint_combine(x, known, mask * 0.5, a_prev)
    with pytest.raises(ValueError, match="`mask` requires grad"):
        ops.inpaint_combine(x, known, mask.clone().requires_grad_(True), a_prev)
    with pytest.raises(ValueError, match="`abar` .*alpha-bar|`a_to` must be an alpha-bar"):
        ops.inpaint_combine(x, known, mask, 1.5)
    with pytest.raises(ValueError, match="`a_to` must hold alpha-bars"):
        ops.inpaint_combine(x, known, mask, a_prev * 2)
    with pytest.raises(ValueError, match="`abar_l` must be < `abar_s`"):
        ops.heterogeneous_noise(known, mask, 0.5, 0.5)
    with pytest.raises(ValueError, match="`abar_l` must be < `abar_s`"):
        ops.heterogeneous_noise(known, mask, a_prev, a_t)
    with pytest.raises(ValueError, match="`eta` must lie in"):
        ops.ddim_step(x, eps, a_t, a_prev, eta=1.5)
    with pytest.raises(ValueError, match="`eps` has shape"):
        ops.ddim_step(x, eps[:, :1], a_t, a_prev)
    with pytest.raises(ValueError, match="`a_from` must be an alpha-bar in \\(0, 1\\)"):
        ops.ddim_step(x, eps, 1.0, 1.0)
    with pytest.raises(ValueError, match="`noise` is not read"):
        ops.ddim_step(x, eps, a_t, a_prev, noise=eps)
    with pytest.raises(ValueError, match="`clip` must be > 0"):
        ops.ddim_step(x, eps, a_t, a_prev, clip=0.0)
    with pytest.raises(ValueError, match="a jump adds noise"):
        ops.resample_forward(x, a_t, a_prev)
    with pytest.raises(ValueError, match="`x` contains NaN"):
        ops.resample_forward(x * float("nan"), a_prev, a_t)
    with pytest.raises(ValueError, match="non-empty batch"):
        ops.resample_forward(x[:0], 0.5, 0.4)
    with pytest.raises(ValueError, match="`a_from` must be a float or a tensor of shape"):
        ops.resample_forward(x, torch.ones(5, dtype=x.dtype) * 0.5, 0.4)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        ops.sampler_step(x, mode="ddpm")
    with pytest.raises(ValueError, match="re-noising jump adds noise"):
        ops.sampler_step(x, mode="ddim", eps=eps, a_from=a_t, a_to=a_prev, a_jump=0.99)


def _on_gpu(b):
    return torch.cuda.is_available() and miga_fast.backends()[b]["runs_here"]


@pytest.mark.parametrize(
    "backend",
    [pytest.param(b, marks=pytest.mark.skipif(not _on_gpu(b), reason=f"needs a GPU, {b}")) for b in ("cuda", "triton")],
)
def test_a_sampler_step_captures_in_a_cuda_graph(backend):
    """No host synchronisation: a whole fused step (noise drawn from a CUDA generator)
    captures in a CUDA graph and replays to the eager result."""
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x, eps, known = (torch.randn(4, 3, 16, 16, device=dev, generator=g) for _ in range(3))
    mask = (torch.rand(4, 1, 16, 16, device=dev, generator=g) > 0.5).float()
    n_k, n_j = (torch.randn(4, 3, 16, 16, device=dev, generator=g) for _ in range(2))
    a_t = torch.linspace(0.3, 0.5, 4, device=dev)

    def step():
        return ops.sampler_step(x, mode="ddim", eps=eps, a_from=a_t, a_to=a_t + 0.2, mask=mask, known=known,
                                noise_known=n_k, a_jump=a_t, noise_jump=n_j)  # fmt: skip

    with miga_fast.set_backend(backend), miga_fast.value_checks(False):
        want = step()
        out = replay_in_cuda_graph(step)
    torch.testing.assert_close(out, want)
