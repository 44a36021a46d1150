"""Diffusion purification (docs/algorithms.md §5): the classifier-attention mask, the
heterogeneous-noise purifier, the uniform (DiffPure-style) baseline, a classifier behind
a purifier, and the DDPM schedule shared by training and sampling."""

from .mask import AttentionMask, attention_mask
from .purifiers import HeterogeneousPurifier, PurifiedClassifier, UniformPurifier
from .schedules import LinearSchedule

__all__ = [
    "AttentionMask",
    "attention_mask",
    "HeterogeneousPurifier",
    "UniformPurifier",
    "PurifiedClassifier",
    "LinearSchedule",
]
