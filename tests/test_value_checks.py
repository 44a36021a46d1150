"""The data-reading checks: at once on CPU tensors, deferred on CUDA tensors by default (no
host sync per op call), and in every mode a ValueError that names the argument."""

import threading

import pytest
import torch

import miga_fast
from miga_fast import DeferredCheckError, ops
from miga_fast.attacks import PGD


def _step_inputs(rng):
    x = torch.rand(2, 3, 8, 8, generator=rng)
    return torch.zeros_like(x), torch.randn(2, 3, 8, 8, generator=rng), x


def test_the_modes():
    assert miga_fast.value_checks is not None
    with pytest.raises(ValueError, match="'sync' or 'deferred'"):
        miga_fast.value_checks("later")
    for mode in (True, False, "sync", "deferred"):
        with miga_fast.value_checks(mode):
            pass


def test_cpu_checks_run_at_once_by_default(rng):
    d, g, x = _step_inputs(rng)
    g[0, 0, 0, 0] = float("nan")
    before = d.clone()
    with pytest.raises(ValueError, match="`grad` contains NaN or Inf"):
        ops.pgd_step_(d, g, x, 0.1, 0.01)
    assert torch.equal(d, before)  # nothing written


def test_deferred_checks_surface_at_the_next_call(rng):
    """Deferred (the default for CUDA tensors; forced here on CPU): the call runs, and the
    next miga_fast call, or check_deferred(), raises the error naming the argument."""
    d, g, x = _step_inputs(rng)
    g[1, 2, 3, 4] = float("inf")
    with miga_fast.value_checks("deferred"):
        ops.pgd_step_(d, g, x, 0.1, 0.01)  # no error here: the verdict is deferred
        with pytest.raises(DeferredCheckError, match="`grad` contains NaN or Inf") as info:
            ops.project_(d, x, 0.1)
        assert isinstance(info.value, ValueError) and "value_checks('sync')" in str(info.value)
        ops.project_(d, x, 0.1)  # reported once: the queue is empty again
        bad_x = x.clone()
        bad_x[0, 0, 0, 0] = 1.5
        ops.project_(d, bad_x, 0.1)
        with pytest.raises(DeferredCheckError, match=r"`x` must lie in \[0, 1\], got values in \[.*, 1.5\]"):
            miga_fast.check_deferred()
        miga_fast.check_deferred()  # nothing left


def test_deferred_per_sample_and_label_checks(rng):
    d, g, x = _step_inputs(rng)
    with miga_fast.value_checks("deferred"):
        ops.pgd_step_(d, g, x, torch.tensor([0.1, -0.2]), 0.01)
        with pytest.raises(DeferredCheckError, match="`eps` must be >= 0"):
            miga_fast.check_deferred()
        from miga_fast._validation import check_labels

        check_labels(torch.tensor([3, -2]), x)
        with pytest.raises(DeferredCheckError, match="`labels` must hold class indices >= 0, got -2"):
            miga_fast.check_deferred()


def test_deferred_checks_belong_to_their_thread(rng):
    d, g, x = _step_inputs(rng)
    g[0, 0, 0, 0] = float("nan")
    done = threading.Event()

    def other():
        with miga_fast.value_checks("deferred"):
            ops.pgd_step_(d.clone(), g, x, 0.1, 0.01)
        done.set()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert done.is_set()
    miga_fast.check_deferred()  # this thread has nothing pending


def test_attacks_check_their_inputs_at_once_in_every_mode(rng):
    """An attack checks its inputs before its loop and waits for the verdict (one wait per
    attack), so bad images fail before any step, on a GPU too."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(2, 3, 8, 8, generator=rng)
    x[0, 0, 0, 0] = 2.0
    with miga_fast.value_checks("deferred"):
        with pytest.raises(ValueError, match=r"`images` must lie in \[0, 1\]") as info:
            PGD(model, steps=2)(x, torch.tensor([0, 1]))
        assert not isinstance(info.value, DeferredCheckError)
    with miga_fast.value_checks(False):
        PGD(model, steps=1)(x.clamp(0, 1), torch.tensor([0, 1]))  # off: the caller checked


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_checks_are_deferred_by_default():
    x = torch.rand(2, 3, 8, 8, device="cuda")
    d, g = torch.zeros_like(x), torch.randn_like(x)
    g[0, 0, 0, 0] = float("nan")
    ops.pgd_step_(d, g, x, 0.1, 0.01)  # queued: no host sync, no error yet
    with pytest.raises(DeferredCheckError, match="`grad` contains NaN or Inf"):
        miga_fast.check_deferred()
