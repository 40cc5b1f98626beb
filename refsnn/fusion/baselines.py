"""The baseline fusion modes of SPEC section 8, built from a ``Config``.

``build(c, stage, dim, heads, *, rng, dtype, previous=None)`` returns the fusion module placed
after ``stage`` (1, 2, 3) for ``c.fusion`` in ``concat``, ``ssa-cross``, ``mbt``,
``factorized`` (``cmqka`` is built by ``refsnn.models.snnergy.build_fusion``). ``previous`` is
the fusion module of the stage before (None at stage 1); ``mbt`` links its stages through it.

    concat       ConcatFusion (identity)                           refsnn.fusion.concat
    ssa-cross    SSACrossFusion (explicit N x N maps)               refsnn.fusion.ssa_cross
    mbt          ConcatFusion before c.mbt_from_stage, then
                 MBTFusion with c.mbt_bottlenecks tokens           refsnn.fusion.mbt
    factorized   FactorizedFusion with c.factorized_fusion_tokens,
                 c.factorized_agg_tokens                            refsnn.fusion.factorized

Every mode uses the config's neurons (``neuron_kwargs``, ``attention_neuron_kwargs``) and
BatchNorm settings; ``ssa-cross`` and ``factorized`` take CMQKA's residual option
(``cmqka_residual``). These modes use SSA cores, which have only a dense path:
``attention_backend`` does not apply to them.
"""
from __future__ import annotations

from ..models.configs import Config
from .concat import ConcatFusion
from .factorized import FactorizedFusion
from .mbt import MBTFusion
from .ssa_cross import SSACrossFusion

__all__ = ["build", "BASELINES"]

BASELINES = ("concat", "ssa-cross", "mbt", "factorized")


def build(c: Config, stage: int, dim: int, heads: int, *, rng, dtype, previous=None):
    """The ``c.fusion`` module after ``stage`` (see the module docstring)."""
    if not isinstance(c, Config):
        raise ValueError(f"c: expected a refsnn.models.Config, got {type(c).__name__}")
    if c.fusion not in BASELINES:
        raise ValueError(f"c.fusion: expected one of {list(BASELINES)} (cmqka is built by "
                         f"refsnn.models.snnergy.build_fusion), got {c.fusion!r}")
    if stage not in (1, 2, 3):
        raise ValueError(f"stage: expected 1, 2 or 3, got {stage!r}")
    common = dict(neuron=c.neuron_kwargs(), attention_neuron=c.attention_neuron_kwargs(),
                  bn_momentum=c.bn_momentum, bn_eps=c.bn_eps, rng=rng, dtype=dtype)
    if c.fusion == "concat" or (c.fusion == "mbt" and stage < c.mbt_from_stage):
        return ConcatFusion()
    if c.fusion == "ssa-cross":
        return SSACrossFusion(dim, heads, residual=c.cmqka_residual, **common)
    if c.fusion == "mbt":
        return MBTFusion(dim, heads, bottlenecks=c.mbt_bottlenecks,
                         previous=previous if isinstance(previous, MBTFusion) else None, **common)
    return FactorizedFusion(dim, heads, fusion_tokens=c.factorized_fusion_tokens,
                            agg_tokens=c.factorized_agg_tokens, residual=c.cmqka_residual, **common)
