"""Modules: Parameter/Module and the layers built on the functional pairs."""
from .attention import QKAttention, QKCore, QKCrossAttention, SSACore, SSACrossAttention, SSAttention
from .layers import LIF, BatchNorm, Conv1x1, Conv2d, Linear, MaxPool2d
from .module import Module, ModuleList, Parameter, load_npz, save_npz_atomic

__all__ = ["Module", "ModuleList", "Parameter", "save_npz_atomic", "load_npz", "Conv2d", "Conv1x1", "Linear",
           "BatchNorm", "LIF", "MaxPool2d", "QKCore", "SSACore", "QKAttention", "QKCrossAttention",
           "SSAttention", "SSACrossAttention"]
