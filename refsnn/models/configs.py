"""Model configuration: one frozen dataclass, three named presets (SPEC section 6).

Every option named in SPEC is a field here and flows down to the modules as arguments. Its
allowed values (``CHOICES``) and its default are those of the module that owns the option (the
neuron's in ``refsnn.functional.lif``, BatchNorm's in ``refsnn.functional.norm``, the fusion
modes' in ``refsnn.fusion``, ...), imported, never restated.
``config(name, **overrides)`` builds a preset; ``Config.to_json`` / ``Config.from_json``
round-trip it (checkpoints store it).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

from ..checks import check_choice
from ..functional.attention import ATTENTION_BACKENDS, ATTENTION_V_THRESHOLD
from ..functional.lif import LIF_DEFAULTS, SPIKE_FNS, SURROGATES
from ..functional.norm import BN_EPS, BN_MOMENTUM
from ..fusion import MASK_FROM, RESIDUALS, factorized, fusion_modes, mbt
from ..nn.attention import QK_MODES

__all__ = ["Config", "config", "PRESETS", "CHOICES", "MODALITIES", "STAGE3_ATTENTIONS"]

# The options this module owns (the model's own wiring); the others come from their modules.
MODALITIES = ("av", "audio", "visual")
STAGE3_ATTENTIONS = ("qk", "ssa")


class _Choices(Mapping):
    """Allowed values of every enumerated field, each list read from the module that owns it.
    A list kept by a registry (the fusion modes) is a function, called at each lookup, so a
    value registered after import (``refsnn.fusion.register_fusion``) is valid at once."""

    def __init__(self, lists: dict[str, tuple | Callable[[], tuple]]):
        self._lists = lists

    def __getitem__(self, name: str) -> tuple:
        values = self._lists[name]
        return tuple(values()) if callable(values) else values

    def __iter__(self) -> Iterator[str]:
        return iter(self._lists)

    def __len__(self) -> int:
        return len(self._lists)

    def __repr__(self) -> str:
        return repr(dict(self))


CHOICES: Mapping[str, tuple] = _Choices({
    "fusion": fusion_modes,
    "modality": MODALITIES,
    "stage3_attention": STAGE3_ATTENTIONS,
    "cmqka_mask": QK_MODES,
    "cmqka_mask_from": MASK_FROM,
    "cmqka_residual": RESIDUALS,
    "attention_backend": ATTENTION_BACKENDS,
    "surrogate": SURROGATES,
    "spike_fn": SPIKE_FNS,
})


@dataclass(frozen=True)
class Config:
    """SNNergy configuration. Presets: ``tiny``, ``cpu``, ``paper`` (see ``config``).

    Geometry
        image_size   input height = width of both modalities (the data pipeline resizes)
        dim          width C of stage 3; stages are C/4, C/2, C
        heads        attention heads per stage
        depths       Q-K blocks per stage
        mlp_ratio    SMLP hidden width = mlp_ratio * stage width
        T            simulation time steps
        classes      output classes (the data set overrides it)
    Options (SPEC sections 2, 4, 5, 6, 8, 12)
        fusion             cmqka | concat | ssa-cross | mbt | factorized (refsnn.fusion registry)
        modality           av | audio | visual (unimodal baselines: one stream, no fusion)
        stage3_attention   qk (QKTA in both streams) | ssa (quadratic SSA, as QKFormer)
        cmqka_mask, cmqka_mask_from, cmqka_residual   SPEC section 5
        attention_backend  packed (Numba bit-packed kernels) | dense (NumPy)
        tau, v_threshold, v_reset (None = soft reset), decay_input, detach_reset,
        surrogate, surrogate_alpha (None = the surrogate's default)   the LIF neurons
        attention_v_threshold   threshold of the attention LIF (0.5, SPEC section 4)
        spike_fn           heaviside | smooth (test-only, SPEC section 12)
        mbt_bottlenecks, mbt_from_stage          the ``mbt`` baseline
        factorized_fusion_tokens, factorized_agg_tokens   the ``factorized`` baseline
        bn_momentum, bn_eps                      BatchNorm
    """

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
    # the defaults below are those of the modules that own them (printed by str(Config()))
    tau: float = LIF_DEFAULTS["tau"]
    v_threshold: float = LIF_DEFAULTS["v_threshold"]
    v_reset: float | None = LIF_DEFAULTS["v_reset"]
    decay_input: bool = LIF_DEFAULTS["decay_input"]
    detach_reset: bool = LIF_DEFAULTS["detach_reset"]
    surrogate: str = LIF_DEFAULTS["surrogate"]
    surrogate_alpha: float | None = LIF_DEFAULTS["alpha"]
    attention_v_threshold: float = ATTENTION_V_THRESHOLD
    spike_fn: str = LIF_DEFAULTS["spike_fn"]
    mbt_bottlenecks: int = mbt.BOTTLENECKS
    mbt_from_stage: int = mbt.FROM_STAGE
    factorized_fusion_tokens: int = factorized.FUSION_TOKENS
    factorized_agg_tokens: int = factorized.AGG_TOKENS
    bn_momentum: float = BN_MOMENTUM
    bn_eps: float = BN_EPS

    def __post_init__(self):
        # tuples may arrive as lists (JSON); normalise before validating
        for name in ("heads", "depths"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _validate(self)

    # -- derived geometry -------------------------------------------------------------
    @property
    def stage_dims(self) -> tuple[int, int, int]:
        """Channel width of stages 1, 2, 3: (C/4, C/2, C)."""
        return (self.dim // 4, self.dim // 2, self.dim)

    @property
    def stage_sizes(self) -> tuple[int, int, int]:
        """Spatial side of each stage's token map (H/4, H/8, H/16, rounded up)."""
        s1 = _ceil_div(_ceil_div(self.image_size, 2), 2)
        s2 = _ceil_div(s1, 2)
        s3 = _ceil_div(s2, 2)
        return (s1, s2, s3)

    @property
    def stage_tokens(self) -> tuple[int, int, int]:
        return tuple(s * s for s in self.stage_sizes)

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("audio", "visual") if self.modality == "av" else (self.modality,)

    def neuron_kwargs(self) -> dict:
        """Keyword arguments of ``lif_forward`` for the ordinary neurons."""
        return dict(tau=self.tau, v_threshold=self.v_threshold, v_reset=self.v_reset,
                    decay_input=self.decay_input, detach_reset=self.detach_reset,
                    surrogate=self.surrogate, alpha=self.surrogate_alpha, spike_fn=self.spike_fn)

    def attention_neuron_kwargs(self) -> dict:
        """The attention LIF: the same neuron with v_threshold = attention_v_threshold."""
        kw = self.neuron_kwargs()
        kw["v_threshold"] = self.attention_v_threshold
        return kw

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["heads"] = list(self.heads)
        d["depths"] = list(self.depths)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))

    def replace(self, **overrides) -> "Config":
        return config_from(self, **overrides)

    def __str__(self) -> str:
        width = max(len(f.name) for f in fields(self))
        lines = [f"Config({self.name})"]
        for f in fields(self):
            if f.name == "name":
                continue
            lines.append(f"  {f.name:<{width}} = {getattr(self, f.name)!r}")
        return "\n".join(lines)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _validate(c: Config) -> None:
    for name, allowed in CHOICES.items():
        check_choice(f"config field {name!r}", getattr(c, name), allowed)
    for name in ("image_size", "classes", "T", "dim", "audio_channels", "visual_channels",
                 "mbt_bottlenecks", "factorized_fusion_tokens", "factorized_agg_tokens"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config field {name!r} must be a positive integer, got {value!r}")
    for name in ("heads", "depths"):
        value = getattr(c, name)
        if (not isinstance(value, tuple) or len(value) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            raise ValueError(f"config field {name!r} must be 3 positive integers (one per stage), got {value!r}")
    if c.dim % 4 != 0:
        raise ValueError(f"config field 'dim' must be a multiple of 4 (stages are dim/4, dim/2, dim), got {c.dim}")
    for s, (width, h) in enumerate(zip(c.stage_dims, c.heads), start=1):
        if width % h != 0:
            raise ValueError(f"config field 'heads': stage {s} width {width} is not divisible by {h} heads")
    if c.image_size < 8:
        raise ValueError(f"config field 'image_size' must be >= 8, got {c.image_size}")
    if not (isinstance(c.mlp_ratio, (int, float)) and c.mlp_ratio > 0):
        raise ValueError(f"config field 'mlp_ratio' must be > 0, got {c.mlp_ratio!r}")
    if int(c.mlp_ratio * c.stage_dims[0]) < 1:
        raise ValueError(f"config field 'mlp_ratio' {c.mlp_ratio} gives an empty SMLP hidden layer")
    check_choice("config field 'mbt_from_stage'", c.mbt_from_stage, (1, 2, 3))
    if c.decay_input and not c.tau > 1.0:
        raise ValueError(f"config field 'tau' must be > 1 with decay_input=True, got {c.tau}")
    if c.surrogate_alpha is not None and not c.surrogate_alpha > 0:
        raise ValueError(f"config field 'surrogate_alpha' must be > 0 or None, got {c.surrogate_alpha}")
    for name in ("v_threshold", "attention_v_threshold", "bn_momentum", "bn_eps"):
        value = getattr(c, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"config field {name!r} must be a positive number, got {value!r}")


PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(name="paper", image_size=128, dim=192, heads=(2, 4, 6), depths=(2, 4, 8),
                  mlp_ratio=2.0, T=4, classes=28),
    "cpu": dict(name="cpu", image_size=64, dim=64, heads=(1, 2, 4), depths=(1, 1, 1),
                mlp_ratio=2.0, T=4, classes=10),
    "tiny": dict(name="tiny", image_size=32, dim=32, heads=(1, 1, 2), depths=(1, 1, 1),
                 mlp_ratio=2.0, T=2, classes=10),
}


def _coerce(name: str, value: Any, like: Any) -> Any:
    """Turn a command-line string into the field's type (``--set key=value``)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if name in ("heads", "depths"):
        parts = text.replace("/", ",").strip("()[]").split(",")
        try:
            return tuple(int(p) for p in parts if p.strip())
        except ValueError:
            raise ValueError(f"config field {name!r}: cannot read {value!r} as integers like 1,2,4") from None
    if text.lower() == "none" and name in ("v_reset", "surrogate_alpha"):
        return None
    if isinstance(like, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"config field {name!r} expects true/false, got {value!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"config field {name!r} expects an integer, got {value!r}") from None
    if isinstance(like, float) or name in ("v_reset", "surrogate_alpha"):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"config field {name!r} expects a number, got {value!r}") from None
    return text


def config_from(base: Config, **overrides) -> Config:
    known = {f.name: f for f in fields(Config)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
    values = base.to_dict()
    for key, value in overrides.items():
        values[key] = _coerce(key, value, values[key])
    return Config.from_dict(values)


def config(name: str = "cpu", **overrides) -> Config:
    """Build the preset ``name`` (``tiny``, ``cpu`` or ``paper``) with field overrides.

    >>> config("tiny", fusion="concat").fusion
    'concat'
    """
    check_choice("config preset", name, tuple(PRESETS))
    return config_from(Config(**PRESETS[name]), **overrides)
