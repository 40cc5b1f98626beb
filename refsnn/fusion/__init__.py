"""Cross-modal fusion modules (SPEC sections 5 and 8): ``forward(x_audio, x_visual) ->
(y_audio, y_visual)``, ``backward(dy_audio, dy_visual) -> (dx_audio, dx_visual)``.

    base.py         the builder interface, ResidualCrossFusion, shared checks and constants
    registry.py     mode name -> builder: register_fusion, fusion_modes, build_fusion
    cmqka.py        CMQKA (the default mode)
    concat.py, ssa_cross.py, mbt.py, factorized.py    the baselines of section 8
"""
from .base import MASK_FROM, RESIDUALS, FusionBuilder, ResidualCrossFusion
from .cmqka import CMQKA
from .concat import ConcatFusion
from .factorized import FactorizedFusion
from .mbt import MBTFusion
from .registry import build_fusion, fusion_modes, register_fusion, unregister_fusion
from .ssa_cross import SSACrossFusion

__all__ = [
    "CMQKA", "ConcatFusion", "SSACrossFusion", "MBTFusion", "FactorizedFusion",
    "ResidualCrossFusion", "FusionBuilder", "MASK_FROM", "RESIDUALS",
    "register_fusion", "unregister_fusion", "fusion_modes", "build_fusion",
]
