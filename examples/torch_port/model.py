"""SNNergy (SPEC sections 3-6) in PyTorch, with refsnn's parameter names (docs/naming.md).

Layout: token maps ``[T, B, N, C]`` (channels last, so a Conv1x1 over tokens is one
``F.linear`` on the last axis and BatchNorm sees a ``[T*B*N, C]`` matrix); feature maps
``[T*B, C, H, W]`` in ``torch.channels_last`` memory format (so the token view of a feature map
is a free reshape, and oneDNN convolutions and max-pooling take their fast path).

``state_dict()`` keys and shapes equal refsnn's (``checkpoint.py`` loads and saves them).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PortConfig
from .lif import LIFOptions, lif
from .ops import batch_norm, max_pool, qk_channel, qk_token, ssa

__all__ = ["SNNergy", "CMQKA", "ResidualCrossFusion", "BatchNorm", "QKAttention", "SSAttention",
           "SSACrossAttention", "SMLP", "PatchEmbed", "frame_indices"]


class BatchNorm(nn.Module):
    """SPEC section 3: ``weight``, ``bias`` (parameters), ``running_mean``, ``running_var``
    (buffers), and nothing else (torch's own BatchNorm adds ``num_batches_tracked``, which is
    not in refsnn's state_dict)."""

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5,
                 tokens: bool = True):
        super().__init__()
        self.tokens = tokens        # [..., C] token map, or a [M, C, H, W] feature map
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.momentum = momentum
        self.eps = eps

    def forward(self, x):
        return batch_norm(x, self, self.training, self.tokens)

    def forward_shared(self, y: torch.Tensor, copies: int) -> torch.Tensor:
        """BN of a token map ``y [n, C]`` shared by ``copies`` (T*B) identical time steps and
        samples (learnable tokens): the statistics of the copies are those of ``y``; only the
        unbiased running variance counts every copy, n_total = copies * n."""
        if not self.training:
            return batch_norm(y, self, False, True)
        out = F.batch_norm(y, None, None, self.weight, self.bias, True, 0.0, self.eps)
        with torch.no_grad():
            n = copies * y.shape[0]
            mean = y.mean(0)
            var = y.var(0, unbiased=False)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * (n / (n - 1)))
        return out

    def forward_repeated(self, y: torch.Tensor, T: int) -> torch.Tensor:
        """BN of a map ``y [B, C, H, W]`` that stands for T identical time steps.

        The normalised values equal those of the T-fold copy; only the unbiased running
        variance sees the T-fold count n = T*B*H*W (SPEC section 6 allows computing the layers
        before the first LIF once)."""
        if not self.training:
            return batch_norm(y, self, False, False)
        out = F.batch_norm(y, None, None, self.weight, self.bias, True, 0.0, self.eps)
        with torch.no_grad():
            n = T * y.numel() // y.shape[1]
            mean = y.mean((0, 2, 3))
            var = y.var((0, 2, 3), unbiased=False)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * (n / (n - 1)))
        return out


def _token_conv(cin: int, cout: int, bias: bool) -> nn.Linear:
    # A Conv1x1 over tokens: weight [out, in] (+ bias [out]); nn.Linear's default init is the
    # kaiming-uniform(a=sqrt 5) of SPEC section 1.
    return nn.Linear(cin, cout, bias=bias)


def _conv_branch(conv, bn, x, T, neuron, pool):
    """conv -> BN -> (MaxPool) -> LIF on a feature map ``[T*B, C, H, W]``."""
    y = bn(conv(x))
    if pool:
        y = max_pool(y)
    s = lif(y.reshape(T, -1, *y.shape[1:]), neuron)
    return s.reshape(-1, *s.shape[2:])


def _to_tokens(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[T*B, C, H, W]`` feature map -> ``[T, B, H*W, C]`` token map (row-major tokens)."""
    TB, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(T, TB // T, H * W, C)


def _to_map(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, N, C]`` token map -> ``[T*B, C, S, S]`` feature map (channels-last strides)."""
    T, B, N, C = x.shape
    S = math.isqrt(N)
    return x.reshape(T * B, S, S, C).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """SPEDS (SPEC section 6). Stage 1 (``first=True``): conv3x3(in->C/2)-BN-MaxPool-LIF = u;
    conv3x3(u->C)-BN-MaxPool-LIF -> conv3x3(C->C)-BN-LIF; shortcut conv1x1 stride 2 on u
    -BN-LIF; the two added. Stages 2-3: the same without the proj0 step."""

    def __init__(self, cin: int, cout: int, first: bool, neuron: LIFOptions, momentum, eps):
        super().__init__()
        self.first = first
        self.neuron = neuron
        mid = cout // 2 if first else cin
        if first:
            self.proj0_conv = nn.Conv2d(cin, mid, 3, 1, 1, bias=False)
            self.proj0_bn = BatchNorm(mid, momentum, eps, tokens=False)
        self.proj1_conv = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.proj1_bn = BatchNorm(cout, momentum, eps, tokens=False)
        self.proj2_conv = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj2_bn = BatchNorm(cout, momentum, eps, tokens=False)
        self.res_conv = nn.Conv2d(mid, cout, 1, 2, 0, bias=False)
        self.res_bn = BatchNorm(cout, momentum, eps, tokens=False)

    def forward(self, x: torch.Tensor, T: int, static: bool = False) -> torch.Tensor:
        """x: ``[T*B, C, H, W]``, or with ``static=True`` ``[B, C, H, W]`` standing for T equal
        steps (stage 1 only). Returns the ``[T*B, C, H', W']`` output map."""
        if self.first:
            if static:
                y = max_pool(self.proj0_bn.forward_repeated(self.proj0_conv(x), T))
                u = lif(y.unsqueeze(0).expand(T, *y.shape), self.neuron)
                # the LIF's output of an expanded input is allocated NCHW: back to channels-last
                u = u.reshape(-1, *u.shape[2:]).contiguous(memory_format=torch.channels_last)
            else:
                u = _conv_branch(self.proj0_conv, self.proj0_bn, x, T, self.neuron, True)
        else:
            u = x
        main = _conv_branch(self.proj1_conv, self.proj1_bn, u, T, self.neuron, True)
        main = _conv_branch(self.proj2_conv, self.proj2_bn, main, T, self.neuron, False)
        res = _conv_branch(self.res_conv, self.res_bn, u, T, self.neuron, False)
        return main + res


class _QKProjections(nn.Module):
    """Q = LIF(BN(Conv1x1(x_q))), K = LIF(BN(Conv1x1(x_k))), out = LIF(BN(Conv1x1+bias(Z)))."""

    def __init__(self, dim, neuron, momentum, eps):
        super().__init__()
        self.neuron = neuron
        self.q_conv = _token_conv(dim, dim, False)
        self.q_bn = BatchNorm(dim, momentum, eps)
        self.k_conv = _token_conv(dim, dim, False)
        self.k_bn = BatchNorm(dim, momentum, eps)
        self.proj_conv = _token_conv(dim, dim, True)
        self.proj_bn = BatchNorm(dim, momentum, eps)

    def project(self, conv, bn, x):
        return lif(bn(conv(x)), self.neuron)


def _count_qk(module, q, z):
    """Energy (SPEC section 7): one AC per Q spike summed and one per K spike kept."""
    counter = getattr(module, "counter", None)
    if counter is not None:
        q_spikes = float(q.sum())
        counter.add(f"{module.energy_name}.qk", macs=0.0, steps=q.shape[0], events=q_spikes,
                    elements=q.numel(), acs=q_spikes + float(torch.count_nonzero(z)),
                    ann_macs=2.0 * q.numel() / q.shape[0])


class QKAttention(_QKProjections):
    """QKTA (``kind="token"``) or QKCA (``kind="channel"``) of SPEC section 4, on ``[T,B,N,D]``."""

    def __init__(self, dim, heads, kind, neuron, attention_neuron, momentum, eps):
        super().__init__(dim, neuron, momentum, eps)
        if kind not in ("token", "channel"):
            raise ValueError(f"kind: expected 'token' or 'channel', got {kind!r}")
        self.heads, self.kind, self.attention_neuron = heads, kind, attention_neuron

    def core(self, q, k):
        if self.kind == "token":
            z = qk_token(q, k, self.heads, self.attention_neuron)[0]
        else:
            z = qk_channel(q, k, self.attention_neuron)[0]
        _count_qk(self, q, z)
        return z

    def forward(self, x):
        q = self.project(self.q_conv, self.q_bn, x)
        k = self.project(self.k_conv, self.k_bn, x)
        return self.project(self.proj_conv, self.proj_bn, self.core(q, k))


class SSAttention(_QKProjections):
    """Spikformer SSA with the explicit N x N map (``stage3_attention="ssa"``)."""

    def __init__(self, dim, heads, neuron, attention_neuron, momentum, eps):
        super().__init__(dim, neuron, momentum, eps)
        self.v_conv = _token_conv(dim, dim, False)
        self.v_bn = BatchNorm(dim, momentum, eps)
        self.heads, self.attention_neuron = heads, attention_neuron

    def forward(self, x):
        q = self.project(self.q_conv, self.q_bn, x)
        k = self.project(self.k_conv, self.k_bn, x)
        v = self.project(self.v_conv, self.v_bn, x)
        z = ssa(q, k, v, self.heads, 0.125, self.attention_neuron)
        counter = getattr(self, "counter", None)
        if counter is not None:
            # evaluated as (Q K^T) V: N accumulates per Q spike and per V spike
            T, B, N, D = q.shape
            events = float(q.sum() + v.sum())
            counter.add(f"{self.energy_name}.ssa", macs=0.0, steps=T, events=events,
                        elements=2 * q.numel(), acs=N * events, ann_macs=2.0 * B * D * N * N)
        return self.project(self.proj_conv, self.proj_bn, z)


class SSACrossAttention(SSAttention):
    """SSA block with Q from ``x_q [T, B, N, D]`` and K, V from ``x_kv [T, B, Nk, D]``: one
    direction of the ``ssa-cross`` fusion, and the attention of the ``mbt`` and ``factorized``
    baselines (SPEC section 8; ``fusion.py``). Same children and names as ``SSAttention``."""

    def forward(self, x_q, x_kv):
        q = self.project(self.q_conv, self.q_bn, x_q)
        k = self.project(self.k_conv, self.k_bn, x_kv)
        v = self.project(self.v_conv, self.v_bn, x_kv)
        z = ssa(q, k, v, self.heads, 0.125, self.attention_neuron)
        return self.project(self.proj_conv, self.proj_bn, z)


class SMLP(nn.Module):
    """conv1x1(bias)-BN-LIF -> conv1x1(bias)-BN-LIF, hidden = int(mlp_ratio * dim)."""

    def __init__(self, dim, hidden, neuron, momentum, eps):
        super().__init__()
        self.neuron = neuron
        self.fc1_conv = _token_conv(dim, hidden, True)
        self.fc1_bn = BatchNorm(hidden, momentum, eps)
        self.fc2_conv = _token_conv(hidden, dim, True)
        self.fc2_bn = BatchNorm(dim, momentum, eps)

    def forward(self, x):
        h = lif(self.fc1_bn(self.fc1_conv(x)), self.neuron)
        return lif(self.fc2_bn(self.fc2_conv(h)), self.neuron)


class Block(nn.Module):
    """x = x + attn(x); x = x + mlp(x)."""

    def __init__(self, attn, mlp):
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class Stage(nn.Module):
    def __init__(self, embed, blocks):
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """The stage's blocks, in order, on a token map ``[T, B, N, C]``."""
        for block in self.blocks:
            tokens = block(tokens)
        return tokens


class Stream(nn.Module):
    """One modality: three stages (``stage1``..``stage3``)."""

    def __init__(self, cfg: PortConfig, modality: str):
        super().__init__()
        neuron, att = cfg.neuron(), cfg.attention_neuron()
        m, e = cfg.bn_momentum, cfg.bn_eps
        cin = cfg.audio_channels if modality == "audio" else cfg.visual_channels
        for s, (width, heads, depth) in enumerate(zip(cfg.stage_dims, cfg.heads, cfg.depths), 1):
            embed = PatchEmbed(cin, width, s == 1, neuron, m, e)
            blocks = []
            for _ in range(depth):
                if s == 3 and cfg.stage3_attention == "ssa":
                    attn = SSAttention(width, heads, neuron, att, m, e)
                else:
                    kind = "channel" if (modality == "audio" and s < 3) else "token"
                    attn = QKAttention(width, heads, kind, neuron, att, m, e)
                blocks.append(Block(attn, SMLP(width, int(cfg.mlp_ratio * width), neuron, m, e)))
            setattr(self, f"stage{s}", Stage(embed, blocks))
            cin = width

    def stage(self, s: int) -> Stage:
        return getattr(self, f"stage{s}")


class _CMQKADirection(_QKProjections):
    def __init__(self, dim, heads, mask, neuron, attention_neuron, momentum, eps):
        super().__init__(dim, neuron, momentum, eps)
        self.heads, self.mask, self.attention_neuron = heads, mask, attention_neuron

    def forward(self, x_q, x_k):
        q = self.project(self.q_conv, self.q_bn, x_q)
        k = self.project(self.k_conv, self.k_bn, x_k)
        if self.mask == "token":
            z = qk_token(q, k, self.heads, self.attention_neuron)[0]
        else:
            z = qk_channel(q, k, self.attention_neuron)[0]
        _count_qk(self, q, z)
        return self.project(self.proj_conv, self.proj_bn, z)


class ResidualCrossFusion(nn.Module):
    """Two cross-attention directions and the residual of SPEC section 5, on token maps
    ``[T, B, N, D]``: X_a' = X_a + alpha * Y_{a<-v}, X_v' = X_v + beta * Y_{v<-a}; both
    directions read the pre-fusion maps. ``mask_from="query_modality"``: a<-v takes its queries
    from X_a and its keys (and values) from X_v. Subclasses assign ``audio_from_visual`` and
    ``visual_from_audio`` (modules ``forward(x_q, x_k) -> y``)."""

    def __init__(self, dim, *, mask_from="query_modality", residual="scalar"):
        super().__init__()
        for name, value, allowed in (("mask_from", mask_from, ("query_modality", "key_modality")),
                                     ("residual", residual, ("scalar", "channel", "fixed"))):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
        self.mask_from, self.residual = mask_from, residual
        if residual != "fixed":
            shape = (1,) if residual == "scalar" else (dim,)
            self.alpha = nn.Parameter(torch.full(shape, 0.5))
            self.beta = nn.Parameter(torch.full(shape, 0.5))

    def weights(self):
        """(alpha, beta), broadcasting over the channel axis (the last)."""
        if self.residual == "fixed":
            return 0.5, 0.5
        return self.alpha, self.beta

    def forward(self, x_a, x_v):
        if self.mask_from == "query_modality":
            y_a = self.audio_from_visual(x_a, x_v)
            y_v = self.visual_from_audio(x_v, x_a)
        else:
            y_a = self.audio_from_visual(x_v, x_a)
            y_v = self.visual_from_audio(x_a, x_v)
        alpha, beta = self.weights()
        out_a, out_v = x_a + alpha * y_a, x_v + beta * y_v
        counter = getattr(self, "counter", None)
        if counter is not None:
            # x + alpha * Y carries the events of x plus the spikes of Y (alpha folds into weights)
            for out, x, y, w in ((out_a, x_a, y_a, alpha), (out_v, x_v, y_v, beta)):
                before = counter.events(x)
                counter.register(out, None if before is None else before + float(torch.count_nonzero(w * y)))
        return out_a, out_v


class CMQKA(ResidualCrossFusion):
    """Cross-modal Q-K attention (SPEC section 5) on token maps ``[T, B, N, D]``: the Q-K
    core (``mask`` "token" = QKTA with ``heads``, "channel" = QKCA) in both directions."""

    def __init__(self, dim, heads, *, mask="token", mask_from="query_modality",
                 residual="scalar", neuron: LIFOptions | None = None,
                 attention_neuron: LIFOptions | None = None, momentum=0.1, eps=1e-5):
        super().__init__(dim, mask_from=mask_from, residual=residual)
        if mask not in ("token", "channel"):
            raise ValueError(f"mask: expected one of ['token', 'channel'], got {mask!r}")
        neuron = neuron or LIFOptions()
        attention_neuron = attention_neuron or neuron.replace(v_threshold=0.5)
        self.audio_from_visual = _CMQKADirection(dim, heads, mask, neuron, attention_neuron, momentum, eps)
        self.visual_from_audio = _CMQKADirection(dim, heads, mask, neuron, attention_neuron, momentum, eps)


def frame_indices(F_: int, T: int) -> list[int]:
    """Frame used at each time step (SPEC section 6): one per step when F == T, else the
    centres of T equal segments, floor((2t+1) F / (2T)); a single frame repeats."""
    if F_ == T:
        return list(range(T))
    return [((2 * t + 1) * F_) // (2 * T) for t in range(T)]


class SNNergy(nn.Module):
    """The two-stream SNNergy of SPEC section 6. ``forward(audio [B,1,H,W], visual [B,F,3,H,W]
    or [B,3,H,W]) -> logits [B, classes]``; a unimodal model takes ``None`` for the other."""

    def __init__(self, cfg: PortConfig):
        super().__init__()
        self.cfg = cfg
        for m in cfg.modalities:
            setattr(self, m, Stream(cfg, m))
        if cfg.modality == "av":
            from .fusion import build_fusion        # fusion.py builds on this file's blocks
            previous = None
            for s, (width, heads) in enumerate(zip(cfg.stage_dims, cfg.heads), 1):
                fusion = build_fusion(cfg, s, width, heads, previous=previous)
                if fusion is not None:              # None: identity (concat), no parameters
                    setattr(self, f"fusion{s}", fusion)
                previous = fusion
        self.head = nn.Linear(len(cfg.modalities) * cfg.dim, cfg.classes)

    def _input(self, x, name, channels, video):
        """Returns (map, static): ``[B, C, H, W]`` when the input repeats over T, else
        ``[T*B, C, H, W]``; channels-last memory format."""
        cfg = self.cfg
        if x is None:
            raise ValueError(f"{name}: required for modality {cfg.modality!r}")
        if video and x.dim() == 4:
            x = x.unsqueeze(1)
        want = 5 if video else 4
        shape = tuple(x.shape)
        if x.dim() != want or shape[-3:] != (channels, cfg.image_size, cfg.image_size):
            what = "[B, F, C, H, W] or [B, C, H, W]" if video else "[B, C, H, W]"
            raise ValueError(f"{name}: expected {what} with C = {channels}, H = W = "
                             f"{cfg.image_size}, got {shape}")
        if not video:
            return x.contiguous(memory_format=torch.channels_last), True
        F_ = x.shape[1]
        if F_ == 1:
            return x[:, 0].contiguous(memory_format=torch.channels_last), True
        idx = frame_indices(F_, cfg.T)
        x = x[:, idx].transpose(0, 1).reshape(-1, *shape[2:])      # [T*B, C, H, W], time-major
        return x.contiguous(memory_format=torch.channels_last), False

    def forward(self, audio=None, visual=None):
        cfg, T = self.cfg, self.cfg.T
        x = {}
        static = {}
        if "audio" in cfg.modalities:
            x["audio"], static["audio"] = self._input(audio, "audio", cfg.audio_channels, False)
        if "visual" in cfg.modalities:
            x["visual"], static["visual"] = self._input(visual, "visual", cfg.visual_channels, True)
        counter = getattr(self, "counter", None)
        if counter is not None:
            for m in x:
                counter.analog(x[m])            # data, even where its values look like spikes
        for s in (1, 2, 3):
            for m in cfg.modalities:
                stage = getattr(self, m).stage(s)
                if s == 1:
                    fmap = stage.embed(x[m], T, static[m])
                else:
                    fmap_in = _to_map(x[m])
                    if counter is not None:
                        counter.register(fmap_in, counter.events(x[m]))
                    fmap = stage.embed(fmap_in, T)
                x[m] = stage.run_blocks(_to_tokens(fmap, T))
            if hasattr(self, f"fusion{s}"):
                x["audio"], x["visual"] = getattr(self, f"fusion{s}")(x["audio"], x["visual"])
        # head input: [visual ; audio], each the mean over tokens and time
        feats = torch.cat([x[m].mean((0, 2)) for m in ("visual", "audio") if m in x], dim=1)
        if counter is not None:
            counter.analog(feats)               # spike-rate averages: the head counts MACs
        return self.head(feats)
