"""Optimizers, learning-rate schedule and gradient clipping (PyTorch's update rules).

Optimizers take the dict of named Parameters from ``Module.parameters()``. Their state
(moments, step count, hyperparameters) and the schedule's state round-trip exactly through
``state_dict()`` / ``load_state_dict()`` as flat dicts of arrays (checkpoint-ready).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .checks import check_choice
from .nn.module import Parameter

__all__ = ["SGD", "AdamW", "CosineSchedule", "clip_grad_norm", "grad_norm", "default_decay_filter",
           "OPTIMIZERS", "build_optimizer"]


def default_decay_filter(name: str, p: Parameter) -> bool:
    """Weight decay on weight matrices and kernels only: not on biases, BatchNorm affine
    parameters or the fusion residual scales (all of rank <= 1)."""
    return p.value.ndim >= 2


def _check_params(parameters) -> dict:
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError("parameters: expected a non-empty dict name -> Parameter (Module.parameters())")
    for name, p in parameters.items():
        if not isinstance(p, Parameter):
            raise ValueError(f"parameters[{name!r}]: expected a Parameter, got {type(p).__name__}")
    return dict(parameters)


class _Optimizer:
    _hyper: tuple = ()
    _slots: tuple = ()

    def __init__(self, parameters, lr, weight_decay, decay_filter):
        self.params = _check_params(parameters)
        if not lr >= 0:
            raise ValueError(f"lr: expected >= 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        filt = decay_filter or (lambda name, p: True)
        self.decays = {name: bool(filt(name, p)) for name, p in self.params.items()}
        self.step_count = 0
        self.state = {slot: {name: np.zeros_like(p.value) for name, p in self.params.items()}
                      for slot in self._slots}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad[...] = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"step_count": np.array(self.step_count, dtype=np.int64),
               "lr": np.array(self.lr, dtype=np.float64),
               "weight_decay": np.array(self.weight_decay, dtype=np.float64)}
        for h in self._hyper:
            out[h] = np.array(getattr(self, h), dtype=np.float64)
        for slot, arrays in self.state.items():
            for name, a in arrays.items():
                out[f"{slot}.{name}"] = a.copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        expected = {"step_count", "lr", "weight_decay", *self._hyper,
                    *(f"{slot}.{name}" for slot in self._slots for name in self.params)}
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(f"optimizer state: missing keys {missing}, unexpected keys {extra}")
        for slot in self._slots:
            for name, p in self.params.items():
                a = state[f"{slot}.{name}"]
                if a.shape != p.value.shape:
                    raise ValueError(f"optimizer state {slot}.{name}: expected shape {p.value.shape}, got {a.shape}")
        self.step_count = int(state["step_count"])
        self.lr = float(state["lr"])
        self.weight_decay = float(state["weight_decay"])
        for h in self._hyper:
            setattr(self, h, float(state[h]))
        for slot in self._slots:
            for name, p in self.params.items():
                self.state[slot][name] = np.array(state[f"{slot}.{name}"], dtype=p.value.dtype, copy=True)


class SGD(_Optimizer):
    """SGD with momentum, Nesterov and (coupled, L2) weight decay, as ``torch.optim.SGD``."""

    _hyper = ("momentum", "dampening", "nesterov")
    _slots = ("momentum_buffer",)

    def __init__(self, parameters, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, decay_filter: Callable | None = None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening = 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
        super().__init__(parameters, lr, weight_decay, decay_filter)
        self.momentum, self.dampening, self.nesterov = float(momentum), float(dampening), bool(nesterov)

    def step(self) -> None:
        first = self.step_count == 0
        for name, p in self.params.items():
            dt = p.value.dtype.type
            g = p.grad
            if self.weight_decay and self.decays[name]:
                g = g + dt(self.weight_decay) * p.value
            if self.momentum:
                buf = self.state["momentum_buffer"][name]
                if first:
                    buf[...] = g
                else:
                    buf *= dt(self.momentum)
                    buf += dt(1 - self.dampening) * g
                g = g + dt(self.momentum) * buf if self.nesterov else buf
            p.value -= dt(self.lr) * g
        self.step_count += 1


class AdamW(_Optimizer):
    """AdamW (decoupled weight decay), as ``torch.optim.AdamW``."""

    _hyper = ("beta1", "beta2", "eps")
    _slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 decay_filter: Callable | None = None):
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas: expected values in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps: expected > 0, got {eps}")
        super().__init__(parameters, lr, weight_decay, decay_filter)
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)

    def step(self) -> None:
        self.step_count += 1
        t = self.step_count
        bias1 = 1 - self.beta1 ** t
        bias2 = 1 - self.beta2 ** t
        for name, p in self.params.items():
            dt = p.value.dtype.type
            if self.weight_decay and self.decays[name]:
                p.value *= dt(1 - self.lr * self.weight_decay)
            m = self.state["exp_avg"][name]
            v = self.state["exp_avg_sq"][name]
            g = p.grad
            m *= dt(self.beta1)
            m += dt(1 - self.beta1) * g
            v *= dt(self.beta2)
            v += dt(1 - self.beta2) * (g * g)
            denom = np.sqrt(v) / dt(math.sqrt(bias2)) + dt(self.eps)
            p.value -= dt(self.lr / bias1) * (m / denom)


# the optimizers a run can name (``--optimizer``)
OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(parameters: dict, name: str, *, lr: float, weight_decay: float, momentum: float = 0.9):
    """The optimizer ``name`` (one of OPTIMIZERS) over ``parameters``, weight decay on the
    weight matrices and kernels only (``default_decay_filter``)."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "adamw":
        return AdamW(parameters, lr=lr, weight_decay=weight_decay, decay_filter=default_decay_filter)
    return SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, decay_filter=default_decay_filter)


class CosineSchedule:
    """Linear warm-up from ``warmup_start`` x lr over ``warmup_steps``, then cosine decay to
    ``min_lr`` at ``total_steps``. ``step()`` advances and sets the optimizer's lr."""

    def __init__(self, optimizer: _Optimizer, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0, warmup_start: float = 0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps: expected >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps: expected 0..total_steps ({total_steps}), got {warmup_steps}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.min_lr, self.warmup_start = float(min_lr), float(warmup_start)
        self.step_count = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            frac = (step + 1) / self.warmup_steps
            return self.base_lr * (self.warmup_start + (1 - self.warmup_start) * frac)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def retarget(self, total_steps: int, warmup_steps: int) -> float:
        """Stretch (or shorten) the schedule to a new total from the current step: the cosine
        of the new total continues from ``step_count`` (a finished run extended for more
        epochs). Returns the learning rate now set."""
        if not self.step_count <= total_steps:
            raise ValueError(f"total_steps: {total_steps} is before the current step {self.step_count}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps: expected 0..total_steps ({total_steps}), got {warmup_steps}")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.optimizer.lr = self.lr_at(self.step_count)
        return self.optimizer.lr

    def step(self) -> float:
        self.step_count += 1
        self.optimizer.lr = self.lr_at(self.step_count)
        return self.optimizer.lr

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: np.array(getattr(self, k)) for k in
                ("base_lr", "total_steps", "warmup_steps", "min_lr", "warmup_start", "step_count")}

    def load_state_dict(self, state: dict) -> None:
        keys = ("base_lr", "total_steps", "warmup_steps", "min_lr", "warmup_start", "step_count")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"schedule state: missing keys {missing}")
        for k in keys:
            v = state[k]
            setattr(self, k, int(v) if k in ("total_steps", "warmup_steps", "step_count") else float(v))
        self.optimizer.lr = self.lr_at(self.step_count)


def grad_norm(parameters: dict) -> float:
    """Global L2 norm of every gradient (computed in float64)."""
    total = 0.0
    for p in parameters.values():
        g = p.grad.astype(np.float64, copy=False).ravel()
        total += float(g @ g)
    return math.sqrt(total)


def clip_grad_norm(parameters: dict, max_norm: float) -> float:
    """Scale all gradients so their global norm is at most ``max_norm``; returns the norm
    before clipping (as ``torch.nn.utils.clip_grad_norm_``)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected > 0, got {max_norm}")
    norm = grad_norm(parameters)
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        for p in parameters.values():
            p.grad *= p.grad.dtype.type(coef)
    return norm
