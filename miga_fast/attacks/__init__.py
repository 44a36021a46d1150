"""Attacks with torchattacks' call convention: `attack = PGD(model, ...)`,
`adv = attack(images, labels)`."""
from .pgd import PGD

__all__ = ["PGD"]
