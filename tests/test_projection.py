"""The projection family: every backend against the plain-PyTorch reference on fresh
random inputs, opcheck, torch.compile, and every bad input."""

import pytest
import torch

import miga_fast
from miga_fast import ops
from miga_fast.reference import projection as ref

from conftest import backend_params

BACKENDS = backend_params()


def _shape(rng):
    """A random image-like shape, odd sizes included."""
    b = int(torch.randint(1, 6, (1,), generator=rng))
    c = int(torch.randint(1, 4, (1,), generator=rng))
    h = int(torch.randint(1, 40, (1,), generator=rng))
    w = int(torch.randint(1, 40, (1,), generator=rng))
    return (b, c, h, w)


def _inputs(rng, shape, dtype, device, zero_grad_sample=True):
    x = torch.rand(shape, generator=rng, dtype=torch.float64).to(dtype)
    delta = ((torch.rand(shape, generator=rng, dtype=torch.float64) - 0.5) * 0.2).to(dtype)
    grad = torch.randn(shape, generator=rng, dtype=torch.float64).to(dtype)
    if zero_grad_sample:
        grad[0] = 0  # sign(0) = 0 and a zero l2 direction: delta only projected
    grad[-1].view(-1)[:3] = 0
    return x.to(device), delta.to(device), grad.to(device)


def _eps(kind, batch, rng, device, dtype, scale=0.1):
    if kind == "scalar":
        return 8 / 255
    e = torch.rand(batch, generator=rng, dtype=torch.float64) * scale
    e[0] = 0.0 if batch > 1 else e[0]  # a zero radius is legal
    return e.to(dtype).to(device)


def _close(actual, expected, dtype):
    tol = {torch.float32: (2e-6, 1e-6), torch.float64: (1e-12, 1e-12)}[dtype]
    torch.testing.assert_close(actual, expected, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps_kind", ["scalar", "per_sample"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_linf_step_equals_reference_exactly(backend, device, dtype, eps_kind, direction, rng):
    for _ in range(3):
        shape = _shape(rng)
        x, d0, g = _inputs(rng, shape, dtype, device)
        eps = _eps(eps_kind, shape[0], rng, device, dtype)
        alpha = _eps(eps_kind, shape[0], rng, device, dtype, scale=0.02)
        with miga_fast.set_backend(backend):
            out = ops.pgd_step_(d0.clone(), g, x, eps, alpha, "linf", direction)
        expected = ref.pgd_step_(d0.clone(), g, x, eps, alpha, "linf", direction)
        assert torch.equal(out, expected), f"max diff {(out - expected).abs().max()}"
        assert ((x + out) >= 0).all() and ((x + out) <= 1).all()


def _torchattacks_update(adv, grad, x, eps, alpha, direction):
    """torchattacks' PGD update, its three lines as written there (a python-float eps and
    alpha; the targeted mode's cost is the negated loss, so its gradient is -grad)."""
    adv = adv + alpha * (direction * grad).sign()
    delta = torch.clamp(adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps_kind", ["scalar", "per_sample"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_linf_image_step_equals_reference_and_torchattacks_exactly(backend, device, dtype, eps_kind, direction, rng):
    """The image-space step: bit for bit the reference, and, for python-float budgets,
    torchattacks' own lines; the delta-form step on the same start agrees to rounding."""
    for _ in range(3):
        shape = _shape(rng)
        x, d0, g = _inputs(rng, shape, dtype, device)
        adv0 = (x + d0).clamp(0, 1)
        eps = _eps(eps_kind, shape[0], rng, device, dtype)
        alpha = _eps(eps_kind, shape[0], rng, device, dtype, scale=0.02)
        with miga_fast.set_backend(backend):
            out = ops.pgd_step_linf_image_(adv0.clone(), g, x, eps, alpha, direction)
            delta_form = ops.pgd_step_(adv0 - x, g, x, eps, alpha, "linf", direction)
        expected = ref.pgd_step_linf_image_(adv0.clone(), g, x, eps, alpha, direction)
        assert torch.equal(out, expected), f"max diff {(out - expected).abs().max()}"
        if eps_kind == "scalar":
            assert torch.equal(out, _torchattacks_update(adv0, g, x, eps, alpha, direction))
        assert (out >= 0).all() and (out <= 1).all()
        assert ((out - x).abs() <= torch.as_tensor(eps, dtype=dtype).reshape(-1, *[1] * 3) + 1e-6).all()
        _close(x + delta_form, out, dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_linf_image_step_on_strided_tensors(backend, device, rng):
    x, d0, g = _inputs(rng, (3, 2, 9, 7), torch.float32, device)
    adv0 = (x + d0).clamp(0, 1)
    with miga_fast.set_backend(backend):
        expected = ops.pgd_step_linf_image_(adv0.clone(), g, x, 0.05, 0.01)
        t = lambda a: a.transpose(2, 3).contiguous().transpose(2, 3)  # noqa: E731 - same values, strided
        adv = t(adv0)
        assert not adv.is_contiguous()
        ops.pgd_step_linf_image_(adv, t(g), t(x), 0.05, 0.01)
    assert torch.equal(adv, expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps_kind", ["scalar", "per_sample"])
def test_l2_step_matches_reference(backend, device, dtype, eps_kind, rng):
    for _ in range(3):
        shape = _shape(rng)
        x, d0, g = _inputs(rng, shape, dtype, device)
        eps = _eps(eps_kind, shape[0], rng, device, dtype, scale=2.0)
        alpha = _eps(eps_kind, shape[0], rng, device, dtype, scale=1.0)
        with miga_fast.set_backend(backend):
            out = ops.pgd_step_(d0.clone(), g, x, eps, alpha, "l2", 1.0)
        expected = ref.pgd_step_(d0.clone(), g, x, eps, alpha, "l2", 1.0)
        assert torch.isfinite(out).all()
        _close(out, expected, dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_l2_zero_gradient_leaves_delta_unchanged(backend, device, rng):
    """No step and no NaN: only the (here inactive) projection, up to the box's rounding."""
    x = torch.full((2, 3, 8, 8), 0.5, device=device)
    d0 = (torch.rand(x.shape, generator=rng) * 0.01).to(device)
    with miga_fast.set_backend(backend):
        out = ops.pgd_step_(d0.clone(), torch.zeros_like(x), x, 10.0, 1.0, "l2")
        projected = ops.project_(d0.clone(), x, 10.0, "l2")
    assert torch.equal(out, projected)
    torch.testing.assert_close(out, d0, rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mi_fgsm_step_matches_reference(backend, device, dtype, rng):
    for _ in range(3):
        shape = _shape(rng)
        x, d0, g = _inputs(rng, shape, dtype, device)
        m0 = torch.randn(shape, generator=rng, dtype=torch.float64).to(dtype).to(device)
        eps = _eps("per_sample", shape[0], rng, device, dtype)
        d, m = d0.clone(), m0.clone()
        with miga_fast.set_backend(backend):
            ops.mi_fgsm_step_(d, m, g, x, eps, 2 / 255, mu=0.9, direction=1.0)
        dr, mr = d0.clone(), m0.clone()
        ref.mi_fgsm_step_(dr, mr, g, x, eps, 2 / 255, 0.9, 1.0)
        _close(m, mr, dtype)
        assert torch.equal(d, dr)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_matches_reference(backend, device, norm, dtype, rng):
    shape = _shape(rng)
    x, d0, _ = _inputs(rng, shape, dtype, device)
    d0 = d0 * 20  # well outside the ball and the box
    eps = _eps("per_sample", shape[0], rng, device, dtype, scale=1.0)
    with miga_fast.set_backend(backend):
        out = ops.project_(d0.clone(), x, eps, norm)
    expected = ref.project_(d0.clone(), x, eps, norm)
    if norm == "linf":
        assert torch.equal(out, expected)
    else:
        _close(out, expected, dtype)
    flat = out.flatten(1)
    size = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    e = eps.to(size.dtype) if isinstance(eps, torch.Tensor) else torch.full_like(size, eps)
    assert (size <= e * (1 + 1e-6) + 1e-7).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_strided_inputs(backend, device, norm, rng):
    """Non-contiguous delta, grad and x give the same result as contiguous ones."""
    base = torch.rand((4, 3, 20, 22), generator=rng)
    x = base.transpose(2, 3).to(device)  # [4, 3, 22, 20], strided
    d_store = ((torch.rand((4, 3, 20, 44), generator=rng) - 0.5) * 0.2).to(device)
    delta = d_store[..., ::2].transpose(2, 3)  # strided view into a larger tensor
    grad = torch.randn((4, 3, 22, 20), generator=rng).to(device).permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not delta.is_contiguous() and not x.is_contiguous()
    expected = ref.pgd_step_(delta.clone(), grad, x, 0.05, 0.01, norm, 1.0)
    before = d_store.clone()
    with miga_fast.set_backend(backend):
        out = ops.pgd_step_(delta, grad, x, 0.05, 0.01, norm, 1.0)
    assert out is delta
    _close(delta, expected, torch.float32)
    # only the viewed elements of the storage changed
    untouched = d_store[..., 1::2]
    assert torch.equal(untouched, before[..., 1::2])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_l2_is_deterministic(backend, device, rng):
    x, d0, g = _inputs(rng, (8, 3, 64, 64), torch.float32, device)
    outs = []
    for _ in range(2):
        with miga_fast.set_backend(backend):
            outs.append(ops.pgd_step_(d0.clone(), g, x, 1.0, 0.5, "l2"))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    "backend,device",
    [p for p in BACKENDS if p.values[1] == "cuda"]
    or [pytest.param("cuda", "cuda", marks=pytest.mark.skip(reason="needs a GPU"))],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_half_precision_on_cuda(backend, device, dtype, norm, rng):
    x, d0, g = _inputs(rng, (4, 3, 32, 32), torch.float32, "cpu")
    expected = ref.pgd_step_(d0.clone().double(), g.double(), x.double(), 0.05, 0.01, norm, 1.0)
    with miga_fast.set_backend(backend):
        out = ops.pgd_step_(d0.to(device, dtype), g.to(device, dtype), x.to(device, dtype), 0.05, 0.01, norm)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.double().cpu(), expected, rtol=0, atol=tol)


# ----------------------------------------------------------------------------- random start


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_init_in_ball_and_box_and_seeded(backend, device, norm, rng):
    x = torch.rand((6, 3, 16, 16), generator=rng).to(device)
    eps = 0.05 if norm == "linf" else 1.0
    with miga_fast.set_backend(backend):
        a = ops.random_init_(torch.empty_like(x), x, eps, norm, generator=123)
        b = ops.random_init_(torch.empty_like(x), x, eps, norm, generator=123)
        c = ops.random_init_(torch.empty_like(x), x, eps, norm, generator=124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((x + a) >= 0).all() and ((x + a) <= 1).all()
    size = a.flatten(1).abs().amax(1) if norm == "linf" else a.flatten(1).norm(dim=1)
    assert (size <= eps * (1 + 1e-6)).all()
    # the same seed gives the same start on every backend
    with miga_fast.set_backend("reference"):
        r = ops.random_init_(torch.empty_like(x), x, eps, norm, generator=123)
    _close(a, r, torch.float32)


def test_random_init_fills_the_ball(rng):
    """l-inf samples spread over [-eps, eps]; l2 radii concentrate near eps (uniform in volume)."""
    x = torch.full((64, 3, 8, 8), 0.5)
    d = ops.random_init_(torch.empty_like(x), x, 0.1, "linf", generator=rng)
    assert d.min() < -0.099 and d.max() > 0.099 and abs(float(d.mean())) < 0.005
    d = ops.random_init_(torch.empty_like(x), x, 0.1, "l2", generator=rng)
    r = d.flatten(1).norm(dim=1)
    assert (r > 0.09).float().mean() > 0.9


# ----------------------------------------------------------------------------- opcheck, compile


def _opcheck_cases(namespace, device, rng):
    x, d, g = _inputs(rng, (3, 2, 5, 7), torch.float32, device)
    m = torch.randn(x.shape, generator=rng).to(device)
    e = torch.tensor([0.1, 0.0, 0.05], device=device)
    a = torch.tensor([0.01], device=device)
    ops_ = getattr(torch.ops, namespace)
    return [
        (ops_.pgd_step_linf_.default, (d.clone(), g, x, e, a, 1.0)),
        (ops_.pgd_step_linf_image_.default, ((x + d).clamp(0, 1), g, x, e, a, -1.0)),
        (ops_.pgd_step_l2_.default, (d.clone(), g, x, e, a, -1.0)),
        (ops_.mi_fgsm_step_.default, (d.clone(), m.clone(), g, x, e, a, 0.9, 1.0)),
        (ops_.project_linf_.default, (d.clone() * 5, x, e)),
        (ops_.project_l2_.default, (d.clone() * 5, x, e)),
    ]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device, rng):
    if backend == "triton":
        import miga_fast.triton_kernels  # noqa: F401
    namespace = "miga_fast_triton" if backend == "triton" else "miga_fast"
    for op, args in _opcheck_cases(namespace, device, rng):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend,device", BACKENDS + [pytest.param("reference", "cpu", id="reference")])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_step_under_torch_compile(backend, device, norm, rng):
    x, d0, g = _inputs(rng, (4, 3, 12, 12), torch.float32, device)

    def step(delta, grad, x):
        ops.pgd_step_(delta, grad, x, 0.05, 0.01, norm)
        return delta * 1.0

    with miga_fast.set_backend(backend):
        eager = step(d0.clone(), g, x)
        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True)(d0.clone(), g, x)
    _close(compiled, eager, torch.float32)


# ----------------------------------------------------------------------------- bad input


def _good(rng):
    x, d, g = _inputs(rng, (3, 2, 4, 4), torch.float32, "cpu")
    return d, g, x


BAD_CASES = {
    "grad shape": (lambda d, g, x: (d, g[:, :1], x, 0.1, 0.01), ValueError, "grad"),
    "x shape": (lambda d, g, x: (d, g, x[:2], 0.1, 0.01), ValueError, "x"),
    "x dtype": (lambda d, g, x: (d, g, x.double(), 0.1, 0.01), TypeError, "x"),
    "x device": (lambda d, g, x: (d, g, x.to("meta"), 0.1, 0.01), ValueError, "x"),
    "negative eps": (lambda d, g, x: (d, g, x, -0.1, 0.01), ValueError, "eps"),
    "negative alpha": (lambda d, g, x: (d, g, x, 0.1, -0.01), ValueError, "alpha"),
    "negative eps tensor": (lambda d, g, x: (d, g, x, torch.tensor([0.1, -0.1, 0.1]), 0.01), ValueError, "eps"),
    "NaN eps": (lambda d, g, x: (d, g, x, float("nan"), 0.01), ValueError, "eps"),
    "eps wrong length": (lambda d, g, x: (d, g, x, torch.tensor([0.1, 0.1]), 0.01), ValueError, "eps"),
    "alpha 2-D": (lambda d, g, x: (d, g, x, 0.1, torch.ones(3, 1)), ValueError, "alpha"),
    "eps string": (lambda d, g, x: (d, g, x, "0.1", 0.01), TypeError, "eps"),
    "NaN in x": (lambda d, g, x: (d, g, x.index_fill(0, torch.tensor([1]), float("nan")), 0.1, 0.01), ValueError, "x"),
    "Inf in grad": (
        lambda d, g, x: (d, g.index_fill(0, torch.tensor([0]), float("inf")), x, 0.1, 0.01),
        ValueError,
        "grad",
    ),
    "x above 1": (lambda d, g, x: (d, g, x + 1.0, 0.1, 0.01), ValueError, "x"),
    "x below 0": (lambda d, g, x: (d, g, x - 1.0, 0.1, 0.01), ValueError, "x"),
    "grad not a tensor": (lambda d, g, x: (d, g.tolist(), x, 0.1, 0.01), TypeError, "grad"),
    "integer delta": (lambda d, g, x: (d.long(), g.long(), x.long(), 0.1, 0.01), TypeError, "delta"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_rejected_and_nothing_changes(case, rng):
    make, exc, name = BAD_CASES[case]
    d, g, x = _good(rng)
    args = make(d, g, x)
    before = args[0].clone()
    with pytest.raises(exc, match=f"`{name}`"):
        ops.pgd_step_(*args)
    assert torch.equal(args[0], before)


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_linf_image_step_rejects_bad_input_and_nothing_changes(case, rng):
    make, exc, name = BAD_CASES[case]
    d, g, x = _good(rng)
    args = make((x + d).clamp(0, 1).to(d.dtype), g, x)
    before = args[0].clone()
    with pytest.raises(exc, match=f"`{'adv' if name == 'delta' else name}`"):
        ops.pgd_step_linf_image_(*args)
    assert torch.equal(args[0], before)


def test_bad_norm_direction_empty_batch_and_requires_grad(rng):
    d, g, x = _good(rng)
    with pytest.raises(ValueError, match="`norm`"):
        ops.pgd_step_(d, g, x, 0.1, 0.01, norm="l1")
    with pytest.raises(ValueError, match="`norm`"):
        ops.project_(d, x, 0.1, norm="linf2")
    with pytest.raises(ValueError, match="`direction`"):
        ops.pgd_step_(d, g, x, 0.1, 0.01, direction=0.5)
    empty = torch.empty((0, 3, 4, 4))
    with pytest.raises(ValueError, match="`delta`"):
        ops.pgd_step_(empty, empty, empty, 0.1, 0.01)
    leaf = d.clone().requires_grad_()
    with pytest.raises(ValueError, match="`delta` requires grad"):
        ops.pgd_step_(leaf, g, x, 0.1, 0.01)
    with torch.no_grad():  # an optimiser-style update of a leaf is fine
        ops.pgd_step_(leaf, g, x, 0.1, 0.01)
    with pytest.raises(ValueError, match="`mu`"):
        ops.mi_fgsm_step_(d, torch.zeros_like(d), g, x, 0.1, 0.01, mu=-1.0)
    with pytest.raises(ValueError, match="`momentum`"):
        ops.mi_fgsm_step_(d, torch.zeros_like(d)[:1], g, x, 0.1, 0.01)
    with pytest.raises(TypeError, match="`generator`"):
        ops.random_init_(d, x, 0.1, generator="seed")


def test_value_checks_can_be_switched_off(rng):
    """Inside value_checks(False) the data-reading checks are skipped (the attacks check
    once, then loop without host syncs); shape checks still run."""
    d, g, x = _good(rng)
    with miga_fast.value_checks(False):
        ops.pgd_step_(d, g, x + 0.5, 0.1, 0.01)  # out-of-range x is not read
        with pytest.raises(ValueError, match="`grad`"):
            ops.pgd_step_(d, g[:1], x, 0.1, 0.01)
    with pytest.raises(ValueError, match="`x`"):
        ops.pgd_step_(d, g, x + 0.5, 0.1, 0.01)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id in ("cpu",)])
def test_compiled_ops_reject_bad_input_from_cpp(backend, device, rng):
    """torch.ops.miga_fast.* called directly (as C++ users do) checks shapes and dtypes:
    a RuntimeError, never a crash."""
    d, g, x = _good(rng)
    e = torch.tensor([0.1])
    with pytest.raises(RuntimeError, match="`grad` has shape"):
        torch.ops.miga_fast.pgd_step_linf_(d, g[:1], x, e, e, 1.0)
    with pytest.raises(RuntimeError, match="`eps` must be a 1-D tensor"):
        torch.ops.miga_fast.project_l2_(d, x, torch.ones(2))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.miga_fast.project_linf_(d.half(), x.half(), e)


def test_float_budgets_are_cached_per_value_dtype_device_and_never_written(rng):
    """A float eps / alpha becomes one cached [1] tensor (no fill per call); the kernels
    only read it, so after many steps it still holds the value."""
    from miga_fast._validation import per_sample

    x, d, g = _inputs(rng, (3, 2, 9, 9), torch.float32, "cpu")
    e32 = per_sample(8 / 255, "eps", d)
    assert per_sample(8 / 255, "eps", d) is e32
    assert per_sample(8 / 255, "eps", d.double()) is not e32
    assert per_sample(4 / 255, "eps", d) is not e32
    for backend in ["reference"] + (["cpu"] if miga_fast.backends()["cpu"]["built"] else []):
        with miga_fast.set_backend(backend):
            for norm in ("linf", "l2"):
                ops.pgd_step_(d, g, x, 8 / 255, 8 / 255, norm)
            ops.mi_fgsm_step_(d, torch.zeros_like(d), g, x, 8 / 255, 8 / 255)
    assert per_sample(8 / 255, "eps", d) is e32
    assert e32.item() == torch.tensor(8 / 255, dtype=torch.float32).item() and e32.shape == (1,)


@pytest.mark.skipif(not miga_fast.backends()["cpu"]["built"], reason="C++ kernels not built")
@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_compile_rule_decomposes_the_linf_step_and_keeps_the_l2_kernel(backend, rng):
    """Under torch.compile with backend "auto", the l-inf step is traced as the reference
    (no miga_fast op left in the graph, so inductor can fuse it) and the l2 and MI-FGSM
    steps stay our kernel (ops.projection.COMPILE_RULE); a backend named explicitly is
    obeyed. The results equal the eager kernel's."""
    from miga_fast.ops.projection import COMPILE_RULE

    x, d0, g = _inputs(rng, (3, 2, 10, 10), torch.float32, "cpu")
    graphs = []

    def record(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm.forward

    steps = {
        "pgd_step_linf_": lambda d, m: ops.pgd_step_(d, g, x, 0.05, 0.01, "linf"),
        "pgd_step_l2_": lambda d, m: ops.pgd_step_(d, g, x, 0.5, 0.1, "l2"),
        "mi_fgsm_step_": lambda d, m: ops.mi_fgsm_step_(d, m, g, x, 0.05, 0.01),
    }
    for op, step in steps.items():

        def f(d, m, step=step):
            step(d, m)
            return d * 1.0

        with miga_fast.set_backend(backend):
            eager = f(d0.clone(), torch.zeros_like(d0))
            torch._dynamo.reset()
            compiled = torch.compile(f, backend=record, fullgraph=True)(d0.clone(), torch.zeros_like(d0))
        kernel_in_graph = any(op in t for t in graphs[-1])
        assert kernel_in_graph == (backend == "cpu" or COMPILE_RULE[op] == "kernel"), (op, graphs[-1])
        _close(compiled, eager, torch.float32)
