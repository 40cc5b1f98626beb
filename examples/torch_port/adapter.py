"""Conformance adapter of the torch port (SPEC section 10): ``run(case, inputs) -> outputs``.

    python -m refsnn.conformance verify --adapter examples.torch_port.adapter:run
    python -m refsnn.conformance verify --adapter examples.torch_port.adapter:run --dtype float32

Every op runs the port's own code (``lif``, ``qk_token``, ``CMQKA``, ``SNNergy``...) or the
torch layer the port's model uses (``F.conv2d``, ``F.linear``); gradients come from autograd,
contracted with the case's upstream gradient ``dout``. The vectors use SPEC's layout
(``[T, B, C, N]`` token maps); the port is channels-last (``[T, B, N, C]``), so token maps are
transposed at this boundary. Nothing here imports refsnn.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import PortConfig
from .energy import energy_report
from .lif import LIFOptions, lif
from .model import CMQKA, BatchNorm, SNNergy
from .ops import batch_norm, max_pool, pack_bits, qk_channel, qk_token, ssa, unpack_bits

__all__ = ["run", "OPS"]


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_() if grad else t


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _neuron(p: dict) -> LIFOptions:
    return LIFOptions(tau=p["tau"], v_threshold=p["v_threshold"], v_reset=p["v_reset"],
                      decay_input=p["decay_input"], detach_reset=p["detach_reset"],
                      surrogate=p["surrogate"], alpha=p["alpha"], spike_fn=p["spike_fn"])


def _lif(case, x):
    xt = _t(x["x"], True)
    s = lif(xt, _neuron(case["params"]))
    s.backward(_t(x["dout"]))
    return {"spikes": _np(s), "dx": _np(xt.grad)}


def _grads(out: torch.Tensor, dout: np.ndarray, named: dict) -> dict:
    out.backward(_t(dout))
    return {name: _np(t.grad) for name, t in named.items() if t is not None}


def _conv2d(case, x):
    p = case["params"]
    T, B = x["x"].shape[:2]
    xt, w = _t(x["x"], True), _t(x["weight"], True)
    b = _t(x["bias"], True) if p["bias"] else None
    xm = xt.reshape(T * B, *xt.shape[2:]).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(xm, w, b, stride=p["stride"], padding=p["padding"])
    y = y.reshape(T, B, *y.shape[1:])
    out = {"y": _np(y)}
    out.update(_grads(y, x["dout"], {"dx": xt, "dweight": w, "dbias": b}))
    return out


def _conv1x1(case, x):
    xt, w = _t(x["x"], True), _t(x["weight"], True)
    b = _t(x["bias"], True) if case["params"]["bias"] else None
    y = F.linear(xt.transpose(2, 3), w, b).transpose(2, 3)     # port: channels-last tokens
    out = {"y": _np(y)}
    out.update(_grads(y, x["dout"], {"dx": xt, "dweight": w, "dbias": b}))
    return out


def _linear(case, x):
    xt, w, b = _t(x["x"], True), _t(x["weight"], True), _t(x["bias"], True)
    y = F.linear(xt, w, b)
    out = {"y": _np(y)}
    out.update(_grads(y, x["dout"], {"dx": xt, "dweight": w, "dbias": b}))
    return out


def _batchnorm(case, x):
    p = case["params"]
    xt = _t(x["x"], True)
    C = xt.shape[2]
    bn = BatchNorm(C, momentum=p["momentum"], eps=p["eps"], tokens=xt.dim() == 4).to(xt.dtype)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(_t(x[name]))
    bn.train(p["training"])
    T, B = xt.shape[:2]
    if xt.dim() == 4:      # tokens [T, B, C, N] -> channels-last [T, B, N, C]
        y = bn(xt.transpose(2, 3)).transpose(2, 3)
    else:                  # maps [T, B, C, H, W] -> [T*B, C, H, W]
        y = batch_norm(xt.reshape(T * B, *xt.shape[2:]), bn, p["training"], False).reshape(xt.shape)
    out = {"y": _np(y), "running_mean": _np(bn.running_mean), "running_var": _np(bn.running_var)}
    out.update(_grads(y, x["dout"], {"dx": xt, "dweight": bn.weight, "dbias": bn.bias}))
    return out


def _maxpool2d(case, x):
    p = case["params"]
    if (p["kernel_size"], p["stride"], p["padding"]) != (3, 2, 1):
        raise ValueError("case params: the port's max pool is MaxPool2d(3, 2, 1), got kernel_size, "
                         f"stride, padding = {(p['kernel_size'], p['stride'], p['padding'])}")
    xt = _t(x["x"], True)
    T, B = xt.shape[:2]
    y = max_pool(xt.reshape(T * B, *xt.shape[2:]).contiguous(memory_format=torch.channels_last))
    y = y.reshape(T, B, *y.shape[1:])
    out = {"y": _np(y)}
    out.update(_grads(y, x["dout"], {"dx": xt}))
    return out


def _mean_pool(case, x):
    xt = _t(x["x"], True)
    y = xt.mean((0, 3))
    out = {"y": _np(y)}
    out.update(_grads(y, x["dout"], {"dx": xt}))
    return out


def _cross_entropy(case, x):
    p = case["params"]
    logits = _t(x["logits"], True)
    loss = F.cross_entropy(logits, _t(x["labels"]).long(), label_smoothing=p["label_smoothing"])
    (loss * p["dloss"]).backward()
    return {"loss": _np(loss), "dlogits": _np(logits.grad)}


def _tok(t: torch.Tensor) -> torch.Tensor:
    """SPEC token map [T, B, D, N] <-> the port's [T, B, N, D]."""
    return t.transpose(2, 3)


def _qk(case, x):
    p = case["params"]
    q, k = _t(x["q"], True), _t(x["k"], True)
    neuron = _neuron(p["neuron"])
    if case["op"] == "qk_token":
        z, _ = qk_token(_tok(q), _tok(k), p["heads"], neuron)
    else:
        z, _ = qk_channel(_tok(q), _tok(k), neuron)
    z = _tok(z)
    out = {"z": _np(z)}
    out.update(_grads(z, x["dout"], {"dq": q, "dk": k}))
    return out


def _ssa(case, x):
    p = case["params"]
    q, k, v = _t(x["q"], True), _t(x["k"], True), _t(x["v"], True)
    y = _tok(ssa(_tok(q), _tok(k), _tok(v), p["heads"], p["scale"], _neuron(p["neuron"])))
    out = {"out": _np(y)}
    out.update(_grads(y, x["dout"], {"dq": q, "dk": k, "dv": v}))
    return out


def _pack_bits(case, x):
    words = pack_bits(_t(x["spikes"]), case["params"]["axis"])
    return {"words": _np(words).view(np.uint64)}


def _unpack_bits(case, x):
    p = case["params"]
    words = torch.from_numpy(x["words"].view(np.int64).copy())
    return {"spikes": _np(unpack_bits(words, p["length"], p["axis"]))}


def _cmqka(case, x):
    p = case["params"]
    dtype = torch.from_numpy(x["x_audio"][:0]).dtype
    m = CMQKA(p["dim"], p["heads"], mask=p["mask"], mask_from=p["mask_from"], residual=p["residual"],
              neuron=_neuron(p["neuron"]), attention_neuron=_neuron(p["attention_neuron"]),
              momentum=p["bn_momentum"], eps=p["bn_eps"]).to(dtype)
    m.load_state_dict({k: _t(x[k]) for k in p["parameters"] + p["buffers"]})
    m.train(p["training"])
    x_a, x_v = _t(x["x_audio"], True), _t(x["x_visual"], True)
    y_a, y_v = m(_tok(x_a), _tok(x_v))
    y_a, y_v = _tok(y_a), _tok(y_v)
    torch.autograd.backward((y_a, y_v), (_t(x["dy_audio"]), _t(x["dy_visual"])))
    out = {"y_audio": _np(y_a), "y_visual": _np(y_v), "dx_audio": _np(x_a.grad),
           "dx_visual": _np(x_v.grad)}
    out.update({f"grad.{k}": _np(v.grad) for k, v in m.named_parameters()})
    out.update({f"state.{k}": _np(v) for k, v in m.named_buffers()})
    return out


def _model(p, x):
    dtype = torch.from_numpy(x["head.weight"][:0]).dtype
    model = SNNergy(PortConfig.from_dict(p["config"])).to(dtype)
    model.load_state_dict({k: _t(x[k]) for k in p["parameters"] + p["buffers"]})
    model.train(p["training"])
    return model


def _energy(case, x):
    p = case["params"]
    rep = energy_report(_model(p, x), _t(x["audio"]) if "audio" in x else None,
                        _t(x["visual"]) if "visual" in x else None)
    out = {}
    for key in ("macs", "acs", "ann_macs", "input_firing_rate"):
        values = [rep["layers"][n][key] if n in rep["layers"] else np.nan for n in p["layers"]]
        out[f"layers.{key}"] = np.array([-1.0 if v is None else v for v in values])
    for key in ("macs", "acs", "ann_macs", "snn_mJ", "ann_mJ"):
        out[f"totals.{key}"] = np.asarray(rep["totals"][key], dtype=np.float64)
    return out


def _snnergy(case, x):
    p = case["params"]
    model = _model(p, x)
    audio = _t(x["audio"]) if "audio" in x else None
    visual = _t(x["visual"]) if "visual" in x else None
    logits = model(audio, visual)
    loss = F.cross_entropy(logits, _t(x["labels"]).long(), label_smoothing=p["loss"]["label_smoothing"])
    (loss * p["loss"]["dloss"]).backward()
    out = {"logits": _np(logits), "loss": _np(loss)}
    out.update({f"grad.{k}": _np(v.grad) for k, v in model.named_parameters()})
    out.update({f"state.{k}": _np(v) for k, v in model.named_buffers()})
    return out


OPS = {
    "lif": _lif, "conv2d": _conv2d, "conv1x1": _conv1x1, "linear": _linear, "batchnorm": _batchnorm,
    "maxpool2d": _maxpool2d, "mean_pool": _mean_pool, "cross_entropy": _cross_entropy,
    "qk_token": _qk, "qk_channel": _qk, "ssa": _ssa, "pack_bits": _pack_bits,
    "unpack_bits": _unpack_bits, "cmqka": _cmqka, "snnergy": _snnergy,
    "energy": _energy,
}


def run(case: dict, inputs: dict) -> dict:
    op = case["op"]
    if op not in OPS:
        raise ValueError(f"case op: the torch port adapter knows {sorted(OPS)}, got {op!r}")
    return OPS[op](case, inputs)
