"""Cross-modal fusion modules (SPEC sections 5 and 8): ``forward(x_audio, x_visual) ->
(y_audio, y_visual)``, ``backward(dy_audio, dy_visual) -> (dx_audio, dx_visual)``."""
from .cmqka import CMQKA, MASK_FROM, RESIDUALS, ResidualCrossFusion

__all__ = ["CMQKA", "ResidualCrossFusion", "MASK_FROM", "RESIDUALS"]
from .concat import ConcatFusion
from .factorized import FactorizedFusion
from .mbt import MBTFusion
from .ssa_cross import SSACrossFusion

__all__ += ["ConcatFusion", "SSACrossFusion", "MBTFusion", "FactorizedFusion"]
