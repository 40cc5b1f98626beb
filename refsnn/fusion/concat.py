"""``concat`` (late fusion, SPEC section 8): the identity at every stage; the modalities meet
only in the head, which concatenates their pooled features."""
from __future__ import annotations

from ..nn.counting import CONTAINER
from ..nn.module import Module

__all__ = ["ConcatFusion", "build"]


class ConcatFusion(Module):
    """Identity with the fusion interface ``forward(x_audio, x_visual) -> (y_audio, y_visual)``.
    Takes no argument: it has no width, no parameter and no option. Energy: none of its own
    (a container with no children)."""

    energy_role = CONTAINER

    def forward(self, x_audio, x_visual):
        return x_audio, x_visual

    def backward(self, dy_audio, dy_visual):
        return dy_audio, dy_visual


def build(c, stage, dim, heads, *, rng, dtype, previous=None) -> ConcatFusion:
    """The ``concat`` mode (also ``mbt``'s stages before ``mbt_from_stage``): draws nothing from
    ``rng``."""
    return ConcatFusion()
