"""SNNergy (SPEC section 6): two spiking streams of three stages, a fusion module after every
stage, and a linear head on the pooled features.

    stage s = 1..3, per modality m:
      X_m = SPEDS_s(X_m)                    patch embedding (H/4 at s=1, then H/2)
      X_m = Block_m^{s,j}(X_m)              x = x + QKAttn(x); x = x + SMLP(x)
      (X_a, X_v) = Fusion_s(X_a, X_v)       CMQKA by default (refsnn.fusion.build_fusion)
    head: mean over tokens and time per modality -> [visual ; audio] -> Linear(2C, classes)

Inputs: ``audio [B, 1, H, W]`` (a log spectrogram, repeated over the T steps) and ``visual
[B, F, 3, H, W]`` or ``[B, 3, H, W]``; step t sees frame ``floor((2t+1) F / (2T))``. When a
stream's input repeats over time, its first conv, BN and pool run once (identical results).
``modality="audio"|"visual"`` builds one stream and a head on it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks import check_float_array
from ..functional.pool import mean_pool_backward, mean_pool_forward
from ..fusion import build_fusion
from ..nn.attention import QKAttention, SSAttention
from ..nn.blocks import SMLP, Block, PatchEmbedInit, PatchEmbedStage, Stage
from ..nn.counting import CONTAINER, register_added
from ..nn.layers import Linear
from ..nn.module import Module
from .configs import Config

__all__ = ["SNNergy", "Stream", "frame_indices"]


def frame_indices(frames: int, steps: int) -> np.ndarray:
    """Frame used at each time step: the centres of T equal segments of F frames (SPEC 6)."""
    t = np.arange(steps)
    return (2 * t + 1) * frames // (2 * steps)


def _attention(c: Config, modality: str, stage: int, dim: int, heads: int, rng, dtype) -> Module:
    kw = dict(neuron=c.neuron_kwargs(), attention_neuron=c.attention_neuron_kwargs(),
              bn_momentum=c.bn_momentum, bn_eps=c.bn_eps, rng=rng, dtype=dtype)
    if stage == 3 and c.stage3_attention == "ssa":
        return SSAttention(dim, heads, **kw)
    mode = "channel" if (modality == "audio" and stage < 3) else "token"
    return QKAttention(dim, heads, mode, attention_backend=c.attention_backend, **kw)


class Stream(Module):
    """One modality's three stages (``stage1..3``), each an embedding and its blocks."""

    energy_role = CONTAINER

    def __init__(self, c: Config, modality: str, *, rng, dtype):
        super().__init__()
        in_channels = c.audio_channels if modality == "audio" else c.visual_channels
        neuron = c.neuron_kwargs()
        bn = dict(momentum=c.bn_momentum, eps=c.bn_eps)
        widths = c.stage_dims
        for s in (1, 2, 3):
            dim = widths[s - 1]
            if s == 1:
                embed = PatchEmbedInit(in_channels, dim, neuron=neuron, rng=rng, dtype=dtype, bn=bn)
            else:
                embed = PatchEmbedStage(widths[s - 2], dim, neuron=neuron, rng=rng, dtype=dtype, bn=bn)
            hidden = int(c.mlp_ratio * dim)
            blocks = [Block(_attention(c, modality, s, dim, c.heads[s - 1], rng, dtype),
                            SMLP(dim, hidden, neuron=neuron, rng=rng, dtype=dtype, bn=bn))
                      for _ in range(c.depths[s - 1])]
            setattr(self, f"stage{s}", Stage(embed, blocks))

    @property
    def stages(self) -> tuple[Stage, Stage, Stage]:
        return (self.stage1, self.stage2, self.stage3)

    def conv_sides(self, side: int) -> dict:
        """Each convolution module's input side for the stream's input of ``side`` x ``side``."""
        sides = {}
        for stage in self.stages:
            found, side = stage.embed.conv_sides(side)
            sides.update(found)
        return sides


class SNNergyCache(NamedTuple):
    order: list             # the modalities in head order ("visual", "audio")
    pool: list              # their MeanPoolCaches
    widths: list            # their feature widths in the head's input
    encodings: dict         # modality -> (F, frame index per step) or None (audio)
    shapes: dict            # modality -> the raw input's shape


class SNNergy(Module):
    """The SNNergy hierarchy for a ``Config`` (``refsnn.models.config(name, **overrides)``).

    ``forward(audio, visual) -> logits [B, classes]``; ``backward(dlogits)`` fills every
    ``Parameter.grad`` (accumulating; call ``zero_grad()`` first) and, with
    ``input_grads=True``, returns ``(d_audio, d_visual)``. Parameters are drawn from
    ``numpy.random.Generator(PCG64(seed))`` in construction order.
    """

    energy_role = CONTAINER

    def __init__(self, config: Config, *, seed: int = 0, dtype=np.float32):
        super().__init__()
        if not isinstance(config, Config):
            raise ValueError(f"config: expected a refsnn.models.Config, got {type(config).__name__}")
        self.config = config
        self.dtype = np.dtype(dtype)
        rng = np.random.Generator(np.random.PCG64(seed))
        for m in config.modalities:
            setattr(self, m, Stream(config, m, rng=rng, dtype=self.dtype))
        if config.modality == "av":
            previous = None
            for s in (1, 2, 3):
                fusion = build_fusion(config, s, config.stage_dims[s - 1], config.heads[s - 1],
                                      rng=rng, dtype=self.dtype, previous=previous)
                setattr(self, f"fusion{s}", fusion)
                previous = fusion
        width = config.stage_dims[2] * len(config.modalities)
        # the head reads spike-rate averages: analog (MACs)
        self.head = Linear(width, config.classes, rng=rng, dtype=self.dtype, reads="analog")
        self._cache = None

    def conv_sides(self) -> dict:
        """Each convolution module's input side (height and width) at ``config.image_size``,
        without running the model (``refsnn.precompile`` picks the kernels to compile by it)."""
        sides = {}
        for m in self.config.modalities:
            sides.update(getattr(self, m).conv_sides(self.config.image_size))
        return sides

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, audio, visual):
        c = self.config
        S = c.image_size
        batch = {}
        if "audio" in c.modalities:
            if audio is None:
                raise ValueError(f"audio: required for modality {c.modality!r}, got None")
            check_float_array(audio, "audio", ndim=4)
            expected = (audio.shape[0], c.audio_channels, S, S)
            if audio.shape[1:] != expected[1:]:
                raise ValueError(f"audio: expected shape [B, {c.audio_channels}, {S}, {S}] (image_size {S}), "
                                 f"got {audio.shape}")
            self._check_dtype(audio, "audio")
            batch["audio"] = audio.shape[0]
        if "visual" in c.modalities:
            if visual is None:
                raise ValueError(f"visual: required for modality {c.modality!r}, got None")
            check_float_array(visual, "visual")
            if visual.ndim == 4:
                visual = visual[:, None]
            if visual.ndim != 5 or visual.shape[2:] != (c.visual_channels, S, S):
                raise ValueError(f"visual: expected shape [B, F, {c.visual_channels}, {S}, {S}] or "
                                 f"[B, {c.visual_channels}, {S}, {S}] (image_size {S}), got {visual.shape}")
            if visual.shape[1] < 1:
                raise ValueError(f"visual: expected at least one frame to map onto T = {c.T} steps, got F = 0")
            self._check_dtype(visual, "visual")
            batch["visual"] = visual.shape[0]
        if len(set(batch.values())) > 1:
            raise ValueError(f"visual: batch size {batch['visual']} differs from audio's {batch['audio']}")
        if min(batch.values()) < 1:
            raise ValueError("audio/visual: empty batch")
        return audio, visual

    def _check_dtype(self, x, name):
        if x.dtype != self.dtype:
            raise ValueError(f"{name}: expected dtype {self.dtype} (the model's), got {x.dtype}")

    def _encode(self, modality, x):
        """Direct encoding to time steps: ``[T' , B, C, H, W]`` with T' = 1 when repeated."""
        T = self.config.T
        if modality == "audio":
            return x[None], None
        F = x.shape[1]
        idx = frame_indices(F, T)
        if (idx == idx[0]).all():
            return x[:, idx[0]][None], (F, idx)
        return np.ascontiguousarray(x[:, idx].transpose(1, 0, 2, 3, 4)), (F, idx)

    # ------------------------------------------------------------------ passes
    def forward(self, audio=None, visual=None):
        """audio ``[B, 1, H, W]``, visual ``[B, F, 3, H, W]`` or ``[B, 3, H, W]`` -> logits."""
        audio, visual = self._check_inputs(audio, visual)
        c = self.config
        raw = {"audio": audio, "visual": visual}
        x, encodings = {}, {}
        for m in c.modalities:
            x[m], encodings[m] = self._encode(m, raw[m])
        for s in (1, 2, 3):
            for m in c.modalities:
                stage = getattr(self, m).stages[s - 1]
                if s == 1:
                    x[m] = stage.forward(x[m], c.T)
                else:
                    T, B, C, _ = x[m].shape
                    x[m] = stage.forward(x[m].reshape(T, B, C, *getattr(self, m).stages[s - 2].spatial))
            if c.modality == "av":
                before = dict(x)
                x["audio"], x["visual"] = getattr(self, f"fusion{s}").forward(x["audio"], x["visual"])
                for m in ("audio", "visual"):       # energy: x + alpha * Y carries both's events
                    register_added(self.counter, x[m], before[m])
        order = [m for m in ("visual", "audio") if m in c.modalities]
        pooled = [mean_pool_forward(x[m]) for m in order]
        features = np.concatenate([p for p, _ in pooled], axis=1)
        self._cache = SNNergyCache(order, [pc for _, pc in pooled], [p.shape[1] for p, _ in pooled],
                                   encodings, {m: (raw[m].shape if raw[m] is not None else None)
                                               for m in c.modalities})
        return self.head.forward(features)

    def backward(self, dlogits, input_grads: bool = False):
        """Backpropagate ``dlogits [B, classes]``; returns ``(d_audio, d_visual)`` when
        ``input_grads`` (None for an absent modality), else None."""
        if self._cache is None:
            raise RuntimeError("backward called before forward")
        order, pool_caches, widths, encodings, shapes = self._cache
        c = self.config
        check_float_array(dlogits, "dlogits", ndim=2)
        dfeatures = self.head.backward(dlogits.astype(self.dtype, copy=False))
        dx, start = {}, 0
        for m, pc, w in zip(order, pool_caches, widths):
            dx[m] = mean_pool_backward(dfeatures[:, start:start + w], pc)
            start += w
        for s in (3, 2, 1):
            if c.modality == "av":
                dx["audio"], dx["visual"] = getattr(self, f"fusion{s}").backward(dx["audio"], dx["visual"])
            for m in c.modalities:
                stage = getattr(self, m).stages[s - 1]
                if s == 1:
                    dx[m] = stage.backward(dx[m], need_dx=input_grads)
                else:
                    d = stage.backward(dx[m])
                    dx[m] = d.reshape(d.shape[0], d.shape[1], d.shape[2], -1)
        if not input_grads:
            return None
        out = {"audio": None, "visual": None}
        for m in c.modalities:
            d = dx[m]                                       # [T', B, C, H, W]
            if m == "audio":
                out[m] = d[0]
                continue
            F, idx = encodings[m]
            dv = np.zeros((d.shape[1], F) + d.shape[2:], dtype=d.dtype)
            if d.shape[0] == 1:
                dv[:, idx[0]] = d[0]
            else:
                np.add.at(dv, (slice(None), idx), d.transpose(1, 0, 2, 3, 4))
            out[m] = dv.reshape(shapes[m]) if len(shapes[m]) == 4 else dv
        return out["audio"], out["visual"]
