"""The conformance adapter of refsnn itself: ``run(case, inputs) -> outputs``.

``python -m refsnn.conformance verify --adapter refsnn.conformance.adapters.refsnn_adapter:run``

Each op of conformance/SPEC.md maps to refsnn's public functions; layouts are converted here
(the vectors keep T and B apart, refsnn's layer functions take them merged).
"""
from __future__ import annotations

import numpy as np

from ... import functional as Fn
from ...energy import report as energy_report
from ...functional import attention as At
from ...fusion import CMQKA
from ...kernels import bitpack
from ...models import Config
from ...models.snnergy import SNNergy
from ..case import lif_kwargs as _lif_kwargs

__all__ = ["run", "OPS"]


def _lif(case, x):
    spikes, cache = Fn.lif_forward(x["x"], **_lif_kwargs(case["params"]))
    return {"spikes": spikes, "dx": Fn.lif_backward(x["dout"], cache)}


def _conv2d(case, x):
    p = case["params"]
    T, B = x["x"].shape[:2]
    y, cache = Fn.conv2d_forward(x["x"].reshape(T * B, *x["x"].shape[2:]), x["weight"], x.get("bias"),
                                 stride=p["stride"], padding=p["padding"])
    dx, dw, db = Fn.conv2d_backward(x["dout"].reshape(y.shape), cache)
    out = {"y": y.reshape(T, B, *y.shape[1:]), "dx": dx.reshape(x["x"].shape), "dweight": dw}
    if p["bias"]:
        out["dbias"] = db
    return out


def _conv1x1(case, x):
    T, B, C, N = x["x"].shape
    y, cache = Fn.conv1x1_forward(x["x"].reshape(T * B, C, N), x["weight"], x.get("bias"))
    dx, dw, db = Fn.conv1x1_backward(x["dout"].reshape(y.shape), cache)
    out = {"y": y.reshape(T, B, *y.shape[1:]), "dx": dx.reshape(x["x"].shape), "dweight": dw}
    if case["params"]["bias"]:
        out["dbias"] = db
    return out


def _linear(case, x):
    y, cache = Fn.linear_forward(x["x"], x["weight"], x["bias"])
    dx, dw, db = Fn.linear_backward(x["dout"], cache)
    return {"y": y, "dx": dx, "dweight": dw, "dbias": db}


def _batchnorm(case, x):
    p = case["params"]
    shape = x["x"].shape
    x3 = x["x"].reshape(shape[0] * shape[1], shape[2], -1)
    y, cache, rm, rv = Fn.batchnorm_forward(x3, x["weight"], x["bias"], x["running_mean"],
                                            x["running_var"], training=p["training"],
                                            momentum=p["momentum"], eps=p["eps"])
    dx, dw, db = Fn.batchnorm_backward(x["dout"].reshape(x3.shape), cache)
    return {"y": y.reshape(shape), "dx": dx.reshape(shape), "dweight": dw, "dbias": db,
            "running_mean": rm, "running_var": rv}


def _maxpool2d(case, x):
    p = case["params"]
    T, B, C, H, W = x["x"].shape
    y, cache = Fn.maxpool2d_forward(x["x"].reshape(T * B, C, H, W), kernel_size=p["kernel_size"],
                                    stride=p["stride"], padding=p["padding"])
    dx = Fn.maxpool2d_backward(x["dout"].reshape(y.shape), cache)
    return {"y": y.reshape(T, B, *y.shape[1:]), "dx": dx.reshape(x["x"].shape)}


def _mean_pool(case, x):
    y, cache = Fn.mean_pool_forward(x["x"])
    return {"y": y, "dx": Fn.mean_pool_backward(x["dout"], cache)}


def _cross_entropy(case, x):
    p = case["params"]
    loss, cache = Fn.cross_entropy_forward(x["logits"], x["labels"], label_smoothing=p["label_smoothing"])
    return {"loss": np.asarray(loss, dtype=x["logits"].dtype),
            "dlogits": Fn.cross_entropy_backward(cache, p["dloss"])}


def _qk_token(case, x):
    p = case["params"]
    z, cache = At.qk_token_forward(x["q"], x["k"], p["heads"], neuron=_lif_kwargs(p["neuron"]))
    dq, dk = At.qk_token_backward(x["dout"], cache)
    return {"z": z, "dq": dq, "dk": dk}


def _qk_channel(case, x):
    p = case["params"]
    z, cache = At.qk_channel_forward(x["q"], x["k"], neuron=_lif_kwargs(p["neuron"]))
    dq, dk = At.qk_channel_backward(x["dout"], cache)
    return {"z": z, "dq": dq, "dk": dk}


def _ssa(case, x):
    p = case["params"]
    out, cache = At.ssa_forward(x["q"], x["k"], x["v"], p["heads"], p["scale"],
                                neuron=_lif_kwargs(p["neuron"]))
    dq, dk, dv = At.ssa_backward(x["dout"], cache)
    return {"out": out, "dq": dq, "dk": dk, "dv": dv}


def _pack_bits(case, x):
    return {"words": bitpack.pack_bits(x["spikes"], axis=case["params"]["axis"])}


def _unpack_bits(case, x):
    p = case["params"]
    return {"spikes": bitpack.unpack_bits(x["words"], p["length"], axis=p["axis"])}


def _cmqka(case, x):
    p = case["params"]
    dtype = x["x_audio"].dtype
    module = CMQKA(p["dim"], p["heads"], mask=p["mask"], mask_from=p["mask_from"],
                   residual=p["residual"], neuron=_lif_kwargs(p["neuron"]),
                   attention_neuron=_lif_kwargs(p["attention_neuron"]), bn_momentum=p["bn_momentum"],
                   bn_eps=p["bn_eps"], rng=np.random.Generator(np.random.PCG64(0)), dtype=dtype)
    module.load_state_dict({k: x[k] for k in p["parameters"] + p["buffers"]})
    module.train(p["training"])
    y_a, y_v = module.forward(x["x_audio"], x["x_visual"])
    module.zero_grad()
    dx_a, dx_v = module.backward(x["dy_audio"], x["dy_visual"])
    out = {"y_audio": y_a, "y_visual": y_v, "dx_audio": dx_a, "dx_visual": dx_v}
    out.update({f"grad.{k}": v.grad for k, v in module.parameters().items()})
    out.update({f"state.{k}": v for k, v in module.buffers().items()})
    return out


def _snnergy(case, x):
    p = case["params"]
    model = _model(p, x)
    logits = model.forward(x.get("audio"), x.get("visual"))
    loss, cache = Fn.cross_entropy_forward(logits, x["labels"], label_smoothing=p["loss"]["label_smoothing"])
    model.zero_grad()
    model.backward(Fn.cross_entropy_backward(cache, p["loss"]["dloss"]))
    out = {"logits": logits, "loss": np.asarray(loss, dtype=logits.dtype)}
    out.update({f"grad.{k}": v.grad for k, v in model.parameters().items()})
    out.update({f"state.{k}": v for k, v in model.buffers().items()})
    return out


def _model(p, x):
    model = SNNergy(Config.from_dict(p["config"]), dtype=x["head.weight"].dtype)
    model.load_state_dict({k: x[k] for k in p["parameters"] + p["buffers"]})
    model.train(p["training"])
    return model


def _energy(case, x):
    p = case["params"]
    rep = energy_report(_model(p, x), [(x.get("audio"), x.get("visual"))])
    out = {}
    for key in ("macs", "acs", "ann_macs", "input_firing_rate"):
        values = [rep["layers"][name][key] if name in rep["layers"] else np.nan for name in p["layers"]]
        out[f"layers.{key}"] = np.array([-1.0 if v is None else v for v in values])
    for key in ("macs", "acs", "ann_macs", "snn_mJ", "ann_mJ"):
        out[f"totals.{key}"] = np.asarray(rep["totals"][key], dtype=np.float64)
    return out


OPS = {
    "lif": _lif, "conv2d": _conv2d, "conv1x1": _conv1x1, "linear": _linear, "batchnorm": _batchnorm,
    "maxpool2d": _maxpool2d, "mean_pool": _mean_pool, "cross_entropy": _cross_entropy,
    "qk_token": _qk_token, "qk_channel": _qk_channel, "ssa": _ssa, "pack_bits": _pack_bits,
    "unpack_bits": _unpack_bits, "cmqka": _cmqka, "snnergy": _snnergy,
    "energy": _energy,
}


def run(case: dict, inputs: dict) -> dict:
    op = case["op"]
    if op not in OPS:
        # a case from a newer vector set than this refsnn: the verifier reports it as an error
        raise ValueError(f"case op: refsnn's adapter knows {sorted(OPS)}, got {op!r}")
    return OPS[op](case, inputs)
