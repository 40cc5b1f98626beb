"""SNNergy configuration for the port, read from a plain dict / JSON with refsnn's field names
(SPEC section 6; ``refsnn/models/configs.py``). The port does not import refsnn.

Fields that only select a refsnn code path (``attention_backend``) are accepted and ignored:
the torch port always computes the dense path, which gives identical results.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from .lif import LIFOptions

__all__ = ["PortConfig", "config", "PRESETS", "FUSION_MODES"]

# SPEC sections 5 and 8 (cmqka: model.py; the baselines but concat: fusion.py)
FUSION_MODES = ("cmqka", "concat", "ssa-cross", "mbt", "factorized")


@dataclass(frozen=True)
class PortConfig:
    name: str = "cpu"
    image_size: int = 64
    classes: int = 10
    T: int = 4
    dim: int = 64
    heads: tuple = (1, 2, 4)
    depths: tuple = (1, 1, 1)
    mlp_ratio: float = 2.0
    audio_channels: int = 1
    visual_channels: int = 3
    fusion: str = "cmqka"
    modality: str = "av"
    stage3_attention: str = "qk"
    cmqka_mask: str = "token"
    cmqka_mask_from: str = "query_modality"
    cmqka_residual: str = "scalar"
    attention_backend: str = "packed"
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    detach_reset: bool = True
    surrogate: str = "sigmoid"
    surrogate_alpha: float | None = None
    attention_v_threshold: float = 0.5
    spike_fn: str = "heaviside"
    mbt_bottlenecks: int = 4
    mbt_from_stage: int = 1
    factorized_fusion_tokens: int = 16
    factorized_agg_tokens: int = 8
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5

    def __post_init__(self):
        for name in ("heads", "depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion: expected one of {list(FUSION_MODES)}, got {self.fusion!r}")
        if self.mbt_from_stage not in (1, 2, 3):
            raise ValueError(f"mbt_from_stage: expected 1, 2 or 3, got {self.mbt_from_stage!r}")
        if self.mbt_bottlenecks < 1:
            raise ValueError(f"mbt_bottlenecks: expected at least 1, got {self.mbt_bottlenecks!r}")
        for name in ("factorized_fusion_tokens", "factorized_agg_tokens"):
            if getattr(self, name) < 2:
                # BatchNorm over the copies of one learnable token normalises it to its bias
                raise ValueError(f"{name}: expected at least 2, got {getattr(self, name)!r}")
        if self.modality not in ("av", "audio", "visual"):
            raise ValueError(f"modality: expected 'av', 'audio' or 'visual', got {self.modality!r}")
        if self.stage3_attention not in ("qk", "ssa"):
            raise ValueError(f"stage3_attention: expected 'qk' or 'ssa', got {self.stage3_attention!r}")
        if self.dim % 4:
            raise ValueError(f"dim: expected a multiple of 4, got {self.dim}")
        for width, h in zip(self.stage_dims, self.heads):
            if width % h:
                raise ValueError(f"heads: stage width {width} is not divisible by {h} heads")

    @property
    def stage_dims(self) -> tuple[int, int, int]:
        return (self.dim // 4, self.dim // 2, self.dim)

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("audio", "visual") if self.modality == "av" else (self.modality,)

    def neuron(self) -> LIFOptions:
        return LIFOptions(tau=self.tau, v_threshold=self.v_threshold, v_reset=self.v_reset,
                          decay_input=self.decay_input, detach_reset=self.detach_reset,
                          surrogate=self.surrogate, alpha=self.surrogate_alpha,
                          spike_fn=self.spike_fn)

    def attention_neuron(self) -> LIFOptions:
        return self.neuron().replace(v_threshold=self.attention_v_threshold)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"], d["depths"] = list(self.heads), list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PortConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "PortConfig":
        return cls.from_dict(json.loads(text))


# SPEC section 6, table of named configs
PRESETS = {
    "paper": dict(name="paper", image_size=128, dim=192, heads=(2, 4, 6), depths=(2, 4, 8),
                  mlp_ratio=2.0, T=4, classes=28),
    "cpu": dict(name="cpu", image_size=64, dim=64, heads=(1, 2, 4), depths=(1, 1, 1),
                mlp_ratio=2.0, T=4, classes=10),
    "tiny": dict(name="tiny", image_size=32, dim=32, heads=(1, 1, 2), depths=(1, 1, 1),
                 mlp_ratio=2.0, T=2, classes=10),
}


def config(name: str = "cpu", **overrides) -> PortConfig:
    if name not in PRESETS:
        raise ValueError(f"config: unknown preset {name!r}; available {sorted(PRESETS)}")
    return PortConfig(**{**PRESETS[name], **overrides})
