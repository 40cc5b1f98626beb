"""An independent PyTorch port of SNNergy, written from SPEC (imports nothing from refsnn).

See README.md. ``adapter.run`` is the conformance adapter (SPEC section 10).
"""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import PRESETS, PortConfig, config
from .lif import LIF, LIFOptions, lif
from .model import CMQKA, SNNergy
from .ops import qk_channel, qk_token, ssa

__all__ = ["lif", "LIF", "LIFOptions", "qk_token", "qk_channel", "ssa", "CMQKA", "SNNergy",
           "PortConfig", "config", "PRESETS", "load_checkpoint", "save_checkpoint",
           "model_from_checkpoint"]
