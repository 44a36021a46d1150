"""Diffusion purification (the heterogeneous-noise purifier comes with its issue); for
now the DDPM schedule shared by training and sampling."""

from .schedules import LinearSchedule

__all__ = ["LinearSchedule"]
