"""Model configurations and the SNNergy hierarchy."""
from .configs import CHOICES, PRESETS, Config, config
from .snnergy import SNNergy

__all__ = ["Config", "config", "PRESETS", "CHOICES", "SNNergy"]
