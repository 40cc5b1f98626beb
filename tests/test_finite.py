"""The non-finite count behind every argument check (refsnn.kernels.finite): the Numba kernel
equals its NumPy twin on any float array, with NaN (any payload and sign), ±inf, the largest
finite values, subnormals and signed zeros; check_finite names the first bad index."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn.checks import NonFiniteError, check_finite
from refsnn.kernels.finite import count_nonfinite, count_nonfinite_numpy


def _specials(dtype):
    info = np.finfo(dtype)
    uint = np.uint32 if dtype == np.float32 else np.uint64
    # NaNs with other payloads and the sign bit set: still all-ones exponents
    payload_nans = np.array([0x7FC00001, 0xFFC00000, 0x7F800001] if dtype == np.float32 else
                            [0x7FF8000000000001, 0xFFF8000000000000, 0x7FF0000000000001],
                            dtype=uint).view(dtype)
    finite = np.array([info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0, 0.0], dtype)
    bad = np.concatenate([np.array([np.nan, np.inf, -np.inf], dtype), payload_nans])
    return finite, bad


@settings(deadline=None, max_examples=60)
@given(dtype=st.sampled_from([np.float32, np.float64]),
       size=st.integers(0, 3000), n_bad=st.integers(0, 5), n_finite=st.integers(0, 8),
       seed=st.integers(0, 2 ** 31 - 1), layout=st.sampled_from(["c", "strided", "fortran"]))
def test_kernel_equals_twin(dtype, size, n_bad, n_finite, seed, layout):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(size) * 10.0 ** rng.integers(-30, 30, size)).astype(dtype)
    finite, bad = _specials(dtype)
    if size:
        for values, count in ((finite, n_finite), (bad, n_bad)):
            x[rng.integers(0, size, count)] = rng.choice(values, count)
    if layout == "strided":
        x = x[::2]
    elif layout == "fortran" and size >= 6:
        x = np.asfortranarray(x[:size - size % 6].reshape(-1, 6))
    assert count_nonfinite(x) == count_nonfinite_numpy(x) == int((~np.isfinite(x)).sum())


def test_every_special_value_is_classified():
    for dtype in (np.float32, np.float64):
        finite, bad = _specials(dtype)
        assert count_nonfinite(np.ascontiguousarray(finite)) == 0
        assert count_nonfinite(np.ascontiguousarray(bad)) == len(bad)


def test_other_dtypes_fall_back_to_the_twin():
    assert count_nonfinite(np.arange(10)) == 0
    assert count_nonfinite(np.array([1.0, np.nan], dtype=np.float16)) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_finite_names_the_first_bad_index(dtype):
    x = np.zeros((3, 4, 5), dtype)
    x[1, 2, 3] = np.inf
    x[2, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"x: contains NaN or inf \(first at index \(1, 2, 3\)\)"):
        check_finite(x, "x")
    check_finite(np.zeros((3, 4, 5), dtype), "x")
