"""Numba kernels, each with a plain-NumPy twin (the tests' oracle)."""

# How an op runs its time loop or reduction: the Numba kernel or the NumPy twin.
BACKENDS = ("numba", "numpy")
