"""miga_fast: fused CUDA, Triton and C++ kernels for semantic adversarial attacks on
image denoisers and diffusion-based adversarial purification, under a thin PyTorch API.

    import miga_fast
    miga_fast.backends()                 # what was built, what runs here
    miga_fast.set_backend("cpu")         # or use it as a context manager
    miga_fast.ops.pgd_step_(delta, grad, x, eps=8/255, alpha=2/255)
    adv = miga_fast.attacks.PGD(model, eps=8/255)(images, labels)
"""

from ._backend import BackendUnavailableError, backends, get_backend, set_backend
from ._validation import DeferredCheckError, check_deferred, value_checks

# isort: split
from . import attacks, ops, reference  # after the backend machinery

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "DeferredCheckError",
    "check_deferred",
    "attacks",
    "backends",
    "get_backend",
    "ops",
    "reference",
    "set_backend",
    "value_checks",
]
