"""``concat`` (late fusion, SPEC section 8): the identity at every stage; the modalities meet
only in the head, which concatenates their pooled features."""
from __future__ import annotations

from ..nn.module import Module

__all__ = ["ConcatFusion"]


class ConcatFusion(Module):
    """Identity with the fusion interface ``forward(x_audio, x_visual) -> (y_audio, y_visual)``."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.op_counts = {}

    def forward(self, x_audio, x_visual):
        return x_audio, x_visual

    def backward(self, dy_audio, dy_visual):
        return dy_audio, dy_visual
