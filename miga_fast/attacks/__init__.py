"""The attacks (docs/attacks.md). Two call conventions, by what the attack is for:

- attacks on a classifier (PGD, MIFGSM, SSIMAttack) follow torchattacks: `adv = attack(images,
  labels)` returns the adversarial images, a tensor, so they drop into code written for
  torchattacks;
- attacks on a denoiser (MIGA and its baselines) return an AttackResult: the adversarial
  input, the denoiser's outputs with and without it, per-sample fidelity and success,
  the loss curves and the time, because judging such an attack needs all of them;
  `attack.run(dataset, folder)` attacks a whole dataset into a resumable run folder.
"""

from .base import DenoiserAttack
from .baselines import DenoiserDegradation, EndToEndPGD
from .miga import MIGA
from .pgd import MIFGSM, PGD
from .result import AttackResult
from .run_folder import RunFolderBusyError
from .ssim_attack import SSIMAttack

__all__ = [
    "PGD",
    "MIFGSM",
    "SSIMAttack",
    "MIGA",
    "DenoiserDegradation",
    "EndToEndPGD",
    "DenoiserAttack",
    "AttackResult",
    "RunFolderBusyError",
]
