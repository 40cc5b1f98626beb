"""A conformance case in memory, and the helpers suites use to build one."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .format import FORMAT, output_spec

__all__ = ["Case", "case_seed", "rng_for", "FORMULAS", "neuron_params", "lif_kwargs", "spikes_out",
           "value_out", "grad_out", "int_out"]

# SPEC section 2: every artefact records the surrogate's formula, not just its name
FORMULAS = {
    "sigmoid": "dS/dH = alpha * s(alpha x) * (1 - s(alpha x)), s = logistic, x = H - v_th",
    "atan": "dS/dH = (alpha / 2) / (1 + (pi / 2 * alpha * x)^2), x = H - v_th",
    "fast_sigmoid": "dS/dH = 1 / (alpha * |x| + 1)^2, x = H - v_th",
}
SMOOTH_FORMULAS = {
    "sigmoid": "S = s(alpha x)",
    "atan": "S = 1/2 + atan(pi / 2 * alpha * x) / pi",
    "fast_sigmoid": "S = 1/2 + x / (1 + alpha * |x|)",
}
DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0, "fast_sigmoid": 25.0}


def neuron_params(*, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=True,
                  surrogate="sigmoid", alpha=None, spike_fn="heaviside") -> dict:
    """Every LIF option spelled out (alpha resolved to a number, formulas recorded)."""
    p = dict(tau=float(tau), v_threshold=float(v_threshold),
             v_reset=None if v_reset is None else float(v_reset), decay_input=bool(decay_input),
             detach_reset=bool(detach_reset), surrogate=surrogate,
             alpha=float(DEFAULT_ALPHA[surrogate] if alpha is None else alpha), spike_fn=spike_fn,
             surrogate_formula=FORMULAS[surrogate])
    if spike_fn == "smooth":
        p["smooth_formula"] = SMOOTH_FORMULAS[surrogate]
    return p


def lif_kwargs(p: dict) -> dict:
    """The keyword arguments of ``refsnn.functional.lif_forward`` from ``neuron_params``."""
    return {k: p[k] for k in ("tau", "v_threshold", "v_reset", "decay_input", "detach_reset",
                              "surrogate", "alpha", "spike_fn")}


def case_seed(suite: str, name: str, attempt: int = 0) -> int:
    """A stable seed per case (independent of the order in which cases are listed)."""
    digest = hashlib.sha256(f"{suite}/{name}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def rng_for(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


@dataclass
class Case:
    suite: str
    name: str
    op: str
    spec: str                       # where the math is, e.g. "SPEC section 2"
    description: str
    params: dict
    layout: dict                    # tensor name -> axes, e.g. "[T, B, C, N]"
    inputs: dict                    # name -> ndarray
    expected: dict                  # name -> ndarray (compared tensors and margin.* references)
    outputs: dict                   # name -> output_spec(...) for every compared tensor
    seed: int | None = None
    spike_margin: dict | None = None
    float32: bool = True            # part of the float32 run (per-op suites)

    def __post_init__(self):
        missing = sorted(set(self.outputs) - set(self.expected))
        if missing:
            raise ValueError(f"{self.suite}/{self.name}: outputs {missing} have no expected array")
        for name, spec in self.outputs.items():
            ref = spec.get("margin")
            if ref is not None and ref not in self.expected:
                raise ValueError(f"{self.suite}/{self.name}: margin tensor {ref!r} missing")
        for name, a in {**self.inputs, **self.expected}.items():
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{self.suite}/{self.name}: {name} is a {type(a).__name__}, not an ndarray")

    def to_json(self) -> dict:
        def describe(a):
            return {"shape": list(a.shape), "dtype": a.dtype.name}

        outputs = {}
        for name, spec in self.outputs.items():
            outputs[name] = {**spec, **describe(self.expected[name])}
        references = sorted(set(self.expected) - set(self.outputs))
        doc = {
            "format": FORMAT, "suite": self.suite, "case": self.name, "op": self.op,
            "spec": self.spec, "description": self.description, "dtype": "float64",
            "float32": self.float32, "seed": self.seed, "params": self.params,
            "layout": self.layout,
            "inputs": {k: describe(v) for k, v in self.inputs.items()},
            "outputs": outputs, "reference": {k: describe(self.expected[k]) for k in references},
            "spike_margin": self.spike_margin,
        }
        return doc


def spikes_out(margin: str | None = None, **kw) -> dict:
    return output_spec("spikes", margin=margin, **kw)


def value_out(**kw) -> dict:
    return output_spec("value", **kw)


def grad_out(**kw) -> dict:
    return output_spec("gradient", **kw)


def int_out(**kw) -> dict:
    return output_spec("integer", **kw)
