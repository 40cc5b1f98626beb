"""Operation counts and energy (SPEC section 7) of the torch port, per layer, as refsnn reports
them (conformance suite ``energy``; the rules are in conformance/SPEC.md).

A layer is named by its module path (``audio.stage1.embed.proj1_conv``; the Q-K core of an
attention block or CMQKA direction is ``<path>.qk``, an SSA core ``<path>.ssa``). Convolutions
and linear layers are counted by forward hooks; the model reports what hooks cannot see (which
maps are analog, the events of a fusion output, the attention cores) to ``module.counter``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

__all__ = ["EnergyCounter", "energy_report", "E_MAC_PJ", "E_AC_PJ"]

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


class EnergyCounter:
    """Events of maps (by identity, or from their values) and per-layer sums."""

    def __init__(self, batch: int):
        self.batch = batch
        self.layers: "OrderedDict[str, dict]" = OrderedDict()
        self._known: dict[int, tuple[torch.Tensor, float | None]] = {}

    # -- events of a map -------------------------------------------------------------------
    def register(self, x: torch.Tensor, events: float | None) -> None:
        self._known[id(x)] = (x, events)         # the reference keeps the id from being reused

    def analog(self, x: torch.Tensor) -> None:
        self.register(x, None)

    def events(self, x: torch.Tensor) -> float | None:
        """Spikes of a spike map; the spikes of every constituent of a sum of spike maps (its
        sum, when every value is a non-negative integer); a registered count; else analog."""
        hit = self._known.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        x = x.detach()
        if bool(((x >= 0) & (x == torch.round(x))).all()):
            return float(x.sum(dtype=torch.float64))
        return None

    # -- per-layer sums ----------------------------------------------------------------------
    def add(self, name: str, *, macs: float, steps: int, x: torch.Tensor | None = None,
            events: float | None = None, elements: int | None = None, acs: float | None = None,
            ann_macs: float | None = None) -> None:
        rec = self.layers.setdefault(name, dict(kind=None, macs=0.0, acs=0.0, ann_macs=0.0,
                                                input_events=0.0, input_elements=0))
        if x is not None:
            events, elements = self.events(x), x.numel()
        kind = "mac" if events is None else "ac"
        rec["kind"] = kind if rec["kind"] in (None, kind) else "mixed"
        rec["ann_macs"] += macs / steps if ann_macs is None else ann_macs
        if events is None:
            rec["macs"] += macs
        else:
            rec["acs"] += events * macs / elements if acs is None else acs
            rec["input_events"] += events
            rec["input_elements"] += elements

    def hook(self, name: str):
        """Forward hook of a Conv2d (feature maps ``[T'*B, C, H, W]``) or Linear (token maps
        ``[T, B, N, C]`` or features ``[B, C]``)."""
        def fn(module, args, out):
            x = args[0]
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = out.numel() * module.in_channels * kh * kw
                steps = x.shape[0] // self.batch
            else:
                macs = out.numel() * module.in_features
                steps = x.shape[0] if x.dim() == 4 else 1
            self.add(name, macs=float(macs), steps=steps, x=x)
        return fn


def attach(model: nn.Module, counter: EnergyCounter | None) -> list:
    """Give every module ``counter`` and ``energy_name``; hook convolutions and linear layers.
    Returns the hook handles (``h.remove()`` detaches)."""
    handles = []
    for name, m in model.named_modules():
        object.__setattr__(m, "counter", counter)
        object.__setattr__(m, "energy_name", name)
        if counter is not None and isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(counter.hook(name)))
    return handles


@torch.no_grad()
def energy_report(model: nn.Module, audio, visual) -> dict:
    """Counts of one eval-mode forward, per sample: ``layers`` (name -> kind, macs, acs,
    ann_macs, input_firing_rate, energy_mJ) and ``totals``."""
    fusion = getattr(getattr(model, "cfg", None), "fusion", "cmqka")
    if fusion not in ("cmqka", "concat"):
        # the baselines' SSA cores (Nq != Nk), analog bottleneck columns and learnable tokens
        # are not counted here; refsnn.energy counts them (docs/fusion.md)
        raise ValueError(f"fusion: the port's energy counts cover 'cmqka' and 'concat', got {fusion!r}")
    ref = audio if audio is not None else visual
    counter = EnergyCounter(batch=ref.shape[0])
    was_training = model.training
    model.eval()
    handles = attach(model, counter)
    try:
        model(audio, visual)
    finally:
        for h in handles:
            h.remove()
        attach(model, None)
        model.train(was_training)
    B = counter.batch
    layers = OrderedDict()
    tot = {"macs": 0.0, "acs": 0.0, "ann_macs": 0.0}
    for name, r in counter.layers.items():
        macs, acs, ann = r["macs"] / B, r["acs"] / B, r["ann_macs"] / B
        rate = r["input_events"] / r["input_elements"] if r["input_elements"] else None
        layers[name] = dict(kind=r["kind"], macs=macs, acs=acs, ann_macs=ann, input_firing_rate=rate,
                            energy_mJ=(E_MAC_PJ * macs + E_AC_PJ * acs) * 1e-9)
        for k, v in (("macs", macs), ("acs", acs), ("ann_macs", ann)):
            tot[k] += v
    tot["snn_mJ"] = (E_MAC_PJ * tot["macs"] + E_AC_PJ * tot["acs"]) * 1e-9
    tot["ann_mJ"] = E_MAC_PJ * tot["ann_macs"] * 1e-9
    return {"samples": B, "layers": layers, "totals": tot}
