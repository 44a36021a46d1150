"""Attacks with torchattacks' call convention: `attack = PGD(model, ...)`,
`adv = attack(images, labels)`."""
from .pgd import PGD
from .ssim_attack import SSIMAttack

__all__ = ["PGD", "SSIMAttack"]
