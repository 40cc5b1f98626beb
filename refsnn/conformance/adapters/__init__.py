"""Conformance adapters shipped with refsnn (refsnn itself)."""
