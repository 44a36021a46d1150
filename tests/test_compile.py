"""compile_denoiser: the compiled forward and backward match eager; a failing compiler
falls back to eager with a warning instead of killing the attack."""

import pytest
import torch

from miga_fast.compile import compile_denoiser
from miga_fast.models import DnCNN, UNetDenoiser


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
