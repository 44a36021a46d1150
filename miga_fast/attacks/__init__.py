"""Attacks with torchattacks' call convention: `attack = PGD(model, ...)`,
`adv = attack(images, labels)`; the denoiser attacks return an AttackResult."""
from .miga import MIGA, AttackResult, DenoiserAttack, DenoiserDegradation, EndToEndPGD, RunFolderBusyError
from .pgd import PGD
from .ssim_attack import SSIMAttack

__all__ = ["PGD", "SSIMAttack", "MIGA", "DenoiserDegradation", "EndToEndPGD", "DenoiserAttack", "AttackResult",
           "RunFolderBusyError"]
