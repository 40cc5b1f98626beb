"""Model configurations and the SNNergy hierarchy."""
from .configs import CHOICES, FUSION_MODES, PRESETS, Config, config
from .snnergy import SNNergy

__all__ = ["Config", "config", "PRESETS", "CHOICES", "FUSION_MODES", "SNNergy"]
