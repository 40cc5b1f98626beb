"""Conformance vectors (SPEC section 10): ``generate`` writes them from refsnn, ``verify`` runs a
port's adapter on them. See docs/conformance.md and conformance/SPEC.md."""
from .format import FORMAT, SPEC_VERSION, TOLERANCES
from .verify import compare_tensor, load_adapter, verify

__all__ = ["FORMAT", "SPEC_VERSION", "TOLERANCES", "verify", "compare_tensor", "load_adapter"]
