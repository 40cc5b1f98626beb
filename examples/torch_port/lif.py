"""The multi-step LIF neuron of SPEC section 2 as a ``torch.autograd.Function``.

Written from SPEC alone (no refsnn import). Per element, for t = 0..T-1, with r = v_reset
(hard reset) or 0 (soft reset, ``v_reset=None``) and V[-1] = r::

    charge  H[t] = V[t-1] + (X[t] - (V[t-1] - r)) / tau      decay_input=True
            H[t] = V[t-1] - (V[t-1] - r) / tau + X[t]        decay_input=False
    fire    S[t] = 1 if H[t] - v_th >= 0 else 0              (fires at equality)
    reset   V[t] = H[t] (1 - S[t]) + v_reset S[t]            hard reset
            V[t] = H[t] - v_th S[t]                          soft reset

The backward is the surrogate-gradient recursion of SPEC section 2, written out by hand
(autograd through the Heaviside would give zero). ``spike_fn="smooth"`` (SPEC section 12)
replaces the Heaviside by the surrogate's primitive so that finite differences check the
backward; the backward code is the same in both modes.

Expressions follow SPEC's order of operations so that the float64 results agree with other
SPEC implementations to the last bits wherever the arithmetic allows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LIFOptions", "lif", "LIF", "SURROGATES", "DEFAULT_ALPHA", "surrogate_grad",
           "spike_function"]

SURROGATES = ("sigmoid", "atan", "fast_sigmoid")
DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0, "fast_sigmoid": 25.0}
SPIKE_FNS = ("heaviside", "smooth")


@dataclass(frozen=True)
class LIFOptions:
    """Neuron options of SPEC section 2 (``v_reset=None`` is the soft reset)."""

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    detach_reset: bool = True
    surrogate: str = "sigmoid"
    alpha: float | None = None
    spike_fn: str = "heaviside"

    def __post_init__(self):
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate: expected one of {list(SURROGATES)}, got {self.surrogate!r}")
        if self.spike_fn not in SPIKE_FNS:
            raise ValueError(f"spike_fn: expected one of {list(SPIKE_FNS)}, got {self.spike_fn!r}")
        if self.decay_input and not self.tau > 1.0:
            raise ValueError(f"tau: expected tau > 1 with decay_input=True, got {self.tau}")
        if not self.tau > 0.0:
            raise ValueError(f"tau: expected tau > 0, got {self.tau}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha: expected a positive number or None, got {self.alpha}")

    @property
    def resolved_alpha(self) -> float:
        return DEFAULT_ALPHA[self.surrogate] if self.alpha is None else float(self.alpha)

    def replace(self, **changes) -> "LIFOptions":
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(changes)
        return LIFOptions(**d)


def spike_function(x: torch.Tensor, o: LIFOptions) -> torch.Tensor:
    """S as a function of x = H - v_th: the Heaviside, or in smooth mode the surrogate's
    primitive (SPEC section 12)."""
    if o.spike_fn == "heaviside":
        return (x >= 0).to(x.dtype)
    a = o.resolved_alpha
    if o.surrogate == "sigmoid":
        return torch.sigmoid(a * x)
    if o.surrogate == "atan":
        return 0.5 + torch.atan((math.pi / 2 * a) * x) / math.pi
    return 0.5 + x / (1.0 + a * x.abs())


def surrogate_grad(x: torch.Tensor, o: LIFOptions) -> torch.Tensor:
    """dS/dH at x = H - v_th (table of SPEC section 2)."""
    a = o.resolved_alpha
    if o.surrogate == "sigmoid":
        s = torch.sigmoid(a * x)
        return a * s * (1.0 - s)
    if o.surrogate == "atan":
        u = (math.pi / 2 * a) * x
        return (a / 2) / (1.0 + u * u)
    d = a * x.abs() + 1.0
    return 1.0 / (d * d)


def _charge(x_t, v, h, o: LIFOptions, r: float) -> None:
    """h <- H[t] in SPEC's order of operations, written into ``h`` (a view of the H buffer)."""
    if o.decay_input:                       # H = V + (X - (V - r)) / tau
        torch.sub(x_t, v if r == 0.0 else v - r, out=h)
        h.div_(o.tau).add_(v)
    else:                                   # H = V - (V - r) / tau + X
        torch.sub(v, (v if r == 0.0 else v - r) / o.tau, out=h)
        h.add_(x_t)


def _fire(h, s, o: LIFOptions) -> None:
    """s <- S(H - v_th), written into ``s``. The Heaviside is a comparison written straight
    into the float buffer (H >= v_th exactly when H - v_th >= 0: it fires at equality); bool
    intermediates and ``torch.heaviside`` cost several times more on the CPU."""
    if o.spike_fn == "heaviside":
        torch.ge(h, o.v_threshold, out=s)
    else:
        s.copy_(spike_function(h - o.v_threshold, o))


class _LIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, o: LIFOptions):
        T = x.shape[0]
        hard = o.v_reset is not None
        r = o.v_reset if hard else 0.0
        h_all = torch.empty_like(x)
        s_all = torch.empty_like(x)
        v = torch.full_like(x[0], r)
        for t in range(T):
            h, s = h_all[t], s_all[t]
            _charge(x[t], v, h, o, r)
            _fire(h, s, o)
            if hard:                        # V = H (1 - S) + v_reset S
                v = h * (1.0 - s)
                if o.v_reset != 0.0:
                    v.add_(s, alpha=o.v_reset)
            else:                           # V = H - v_th S
                v = torch.sub(h, s, alpha=o.v_threshold)
        ctx.options = o
        # the spikes are this op's output, which the next layer keeps anyway
        ctx.save_for_backward(h_all, s_all)
        return s_all

    @staticmethod
    def backward(ctx, ds: torch.Tensor):
        """SPEC section 2: dH[t] = dS[t] g[t] + dV[t] dV/dH[t]; dV[t-1] = dH[t] (1 - 1/tau);
        dX[t] = dH[t] / tau (decay_input) or dH[t]. One time step at a time, so a step's
        arrays stay in cache."""
        h_all, s_all = ctx.saved_tensors
        o: LIFOptions = ctx.options
        hard = o.v_reset is not None
        leak = 1.0 - 1.0 / o.tau
        a = o.resolved_alpha
        dx = torch.empty_like(h_all)
        dv = None
        for t in range(h_all.shape[0] - 1, -1, -1):
            u = h_all[t] - o.v_threshold
            if o.surrogate == "sigmoid" and (o.detach_reset or not hard):
                # dS * alpha s(alpha u) (1 - s(alpha u)) in one kernel
                dh = torch.ops.aten.sigmoid_backward(ds[t] * a, torch.sigmoid(u * a))
                g = None
            else:
                g = surrogate_grad(u, o)
                dh = ds[t] * g
            if dv is not None:
                if hard:
                    s = s_all[t]
                    if o.detach_reset:                      # dV/dH = 1 - S
                        dh.add_(dv).addcmul_(dv, s, value=-1.0)
                    else:                                   # (1 - S) + (v_reset - H) g
                        g = surrogate_grad(u, o) if g is None else g
                        dh.addcmul_(dv, (1.0 - s) + (o.v_reset - h_all[t]) * g)
                elif o.detach_reset:                        # dV/dH = 1
                    dh.add_(dv)
                else:                                       # 1 - v_th g
                    g = surrogate_grad(u, o) if g is None else g
                    dh.addcmul_(dv, 1.0 - o.v_threshold * g)
            dv = dh * leak
            if o.decay_input:
                torch.div(dh, o.tau, out=dx[t])
            else:
                dx[t] = dh
        return dx, None


def lif(x: torch.Tensor, options: LIFOptions | None = None, **kw) -> torch.Tensor:
    """Spikes of LIF neurons driven by ``x`` (``[T, ...]``, time first). Options as keywords
    (``tau``, ``v_threshold``, ``v_reset``, ...) or a ``LIFOptions``."""
    o = options if options is not None else LIFOptions(**kw)
    if options is not None and kw:
        o = options.replace(**kw)
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x: expected [T, ...] with T >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
    return _LIFFunction.apply(x, o)


class LIF(torch.nn.Module):
    """Module wrapper (no parameters, no state between calls: each call starts at V = r)."""

    def __init__(self, options: LIFOptions | None = None, **kw):
        super().__init__()
        self.options = options if options is not None else LIFOptions(**kw)

    def forward(self, x):
        return lif(x, self.options)

    def extra_repr(self):
        return repr(self.options)
