"""Bit packing (SPEC section 4): bit order, any axis, lengths not a multiple of 64, the Numba
kernels against their NumPy twins, rejection of non-binary input, and the hardware popcount."""
import numba as nb
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn.kernels import qk as qk_kernels
from refsnn.kernels.bitpack import (num_words, pack_bits, pack_numpy, popcount64, unpack_bits,
                                    unpack_numpy)


def _rng(seed):
    return np.random.Generator(np.random.PCG64(seed))


def _spikes(rng, shape, rate, dtype):
    x = rng.random(shape) < rate
    return x if dtype == np.bool_ else x.astype(dtype)


def _as_pqr(x, axis):
    ax = axis % x.ndim
    P = int(np.prod(x.shape[:ax]))
    Q = int(np.prod(x.shape[ax + 1:]))
    return x.reshape(P, x.shape[ax], Q)


def test_bit_order_and_padding():
    # element 64*w + i of the axis is bit i of word w; bits past the length are 0
    x = np.zeros(130, dtype=np.uint8)
    x[[0, 5, 63, 64, 129]] = 1
    w = pack_bits(x)
    assert w.dtype == np.uint64 and w.shape == (3,)
    assert int(w[0]) == (1 << 0) | (1 << 5) | (1 << 63)
    assert int(w[1]) == 1
    assert int(w[2]) == 1 << 1
    full = pack_bits(np.ones(70, dtype=np.float32))
    assert int(full[0]) == 2**64 - 1 and int(full[1]) == 2**6 - 1


def test_middle_axis_keeps_trailing_axis():
    x = np.zeros((2, 70, 3), dtype=np.float64)
    x[1, 65, 2] = 1
    w = pack_bits(x, axis=1)
    assert w.shape == (2, 2, 3)
    assert np.count_nonzero(w) == 1 and int(w[1, 1, 2]) == 1 << 1


@settings(deadline=None, max_examples=40)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), data=st.data(),
       length=st.sampled_from([1, 63, 64, 65, 128, 130, 200]),
       rate=st.sampled_from([0.0, 0.3, 1.0]),
       dtype=st.sampled_from([np.bool_, np.uint8, np.int32, np.int64, np.float32, np.float64]),
       parallel=st.sampled_from([None, True, False]), seed=st.integers(0, 2**16))
def test_roundtrip_and_twins(shape, data, length, rate, dtype, parallel, seed):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    full = list(shape)
    full.insert(axis % (len(shape) + 1), length)
    x = _spikes(_rng(seed), tuple(full), rate, dtype)
    w = pack_bits(x, axis=axis, parallel=parallel)
    ax = axis % x.ndim
    assert w.shape == x.shape[:ax] + (num_words(length),) + x.shape[ax + 1:]
    np.testing.assert_array_equal(_as_pqr(w, axis), pack_numpy(_as_pqr(x, axis)))
    y = unpack_bits(w, length, axis=axis, parallel=parallel)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(_as_pqr(y, axis), unpack_numpy(_as_pqr(w, axis), length))
    y32 = unpack_bits(w, length, axis=axis, dtype=np.float32)
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(y32, x)
    assert int(np.bitwise_count(w).sum()) == int(np.count_nonzero(x))


@pytest.mark.parametrize("parallel", [True, False])
def test_large_blocks_of_both_kernels(parallel):
    # more than one work unit along every blocked axis of both pack and unpack kernels
    rng = _rng(3)
    x = _spikes(rng, (3, 70, 600), 0.4, np.float32)
    w = pack_bits(x, axis=1, parallel=parallel)
    np.testing.assert_array_equal(w, pack_numpy(x))
    np.testing.assert_array_equal(unpack_bits(w, 70, axis=1, parallel=parallel), x)
    x = _spikes(rng, (2, 64 * 70 + 5), 0.4, np.float32)
    w = pack_bits(x, parallel=parallel)
    np.testing.assert_array_equal(w, pack_numpy(x[:, :, None])[:, :, 0])
    np.testing.assert_array_equal(unpack_bits(w, x.shape[1], parallel=parallel), x)


@pytest.mark.parametrize("parallel", [True, False])
def test_non_binary_found_by_either_kernel(parallel):
    x = np.zeros((3, 70, 600), dtype=np.float32)
    x[2, 69, 599] = 0.5
    with pytest.raises(ValueError, match=r"index \(2, 69, 599\)"):
        pack_bits(x, axis=1, parallel=parallel)
    with pytest.raises(ValueError, match=r"index \(2, 69, 599\)"):
        pack_bits(x, axis=-1, parallel=parallel)


@pytest.mark.parametrize("bad", [2.0, 0.5, np.nan, -1.0, np.inf])
@pytest.mark.parametrize("axis", [0, -1])
def test_non_binary_is_rejected_never_cast(bad, axis):
    x = np.zeros((5, 130), dtype=np.float64)
    x[3, 100] = bad
    with pytest.raises(ValueError, match=r"spikes: expected binary spikes .* index \(3, 100\)"):
        pack_bits(x, axis=axis)
    with pytest.raises(ValueError, match=r"^q: expected binary"):
        pack_bits(x, axis=axis, name="q")


def test_non_binary_integers_and_bad_dtypes():
    with pytest.raises(ValueError, match=r"found np.int64\(2\) at index \(2,\)"):
        pack_bits(np.array([0, 1, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="real or integer dtype"):
        pack_bits(np.array([1 + 0j, 0j]))
    with pytest.raises(ValueError, match="numpy.ndarray"):
        pack_bits([0, 1, 1])
    with pytest.raises(ValueError, match="axis"):
        pack_bits(np.zeros((2, 3)), axis=2)


def test_unpack_checks():
    w = pack_bits(np.ones(70, dtype=np.uint8))
    with pytest.raises(ValueError, match="uint64"):
        unpack_bits(w.astype(np.int64), 70)
    with pytest.raises(ValueError, match="need 1 words"):
        unpack_bits(w, 64)
    with pytest.raises(ValueError, match="padding bits"):
        unpack_bits(w, 69)
    with pytest.raises(ValueError, match="length"):
        unpack_bits(w, -1)


def test_empty_axis():
    w = pack_bits(np.zeros((3, 0)))
    assert w.shape == (3, 0)
    assert unpack_bits(w, 0).shape == (3, 0)


@nb.njit
def _popcount_all(w):
    out = np.empty(w.size, dtype=np.int64)
    for i in range(w.size):
        out[i] = popcount64(w[i])
    return out


def test_popcount64_matches_numpy():
    rng = _rng(1)
    w = rng.integers(0, 2**64 - 1, size=1000, dtype=np.uint64, endpoint=True)
    w[:3] = [0, 2**64 - 1, 2**63]
    np.testing.assert_array_equal(_popcount_all(w), np.bitwise_count(w))


@pytest.mark.parametrize("kernel", [qk_kernels.qk_token_packed_kernel,
                                    qk_kernels.qk_channel_packed_kernel])
def test_attention_kernels_compile_to_popcnt(kernel):
    # compile for float32 by running once, then read the machine code
    rng = _rng(2)
    lif = dict(tau=np.float32(2), v_th=np.float32(0.5), v_reset=np.float32(0), hard_reset=True,
               decay_input=True)
    if kernel is qk_kernels.qk_token_packed_kernel:
        qw = pack_bits(_spikes(rng, (2, 3, 70, 5), 0.5, np.float32), axis=2)
        qk_kernels.qk_token_packed(qw, qw, lif, parallel=True)
    else:
        qw = pack_bits(_spikes(rng, (2, 3, 70), 0.5, np.float32), axis=2)
        qk_kernels.qk_channel_packed(qw, qw, lif, parallel=True)
    # cached machine code cannot be inspected: compile the same source again, uncached
    assert kernel.signatures
    fresh = nb.njit(parallel=True)(kernel.py_func)
    for sig in kernel.signatures:
        fresh.compile(sig)
    asm = "\n".join(fresh.inspect_asm(sig) for sig in fresh.signatures)
    assert "popcnt" in asm.lower()


def test_packed_spikes_value():
    # PackedSpikes: the words, the length and the axis; shape, size and unpack describe the spikes
    from refsnn.kernels.bitpack import PackedSpikes, check_packed, pack_spikes, padding_set
    x = _spikes(_rng(4), (3, 70, 5), 0.4, np.float32)
    p = pack_spikes(x, axis=-2)
    assert isinstance(p, PackedSpikes) and p.axis == 1 and p.length == 70
    assert p.words.shape == (3, 2, 5) and p.shape == x.shape and p.size == x.size and p.ndim == 3
    np.testing.assert_array_equal(p.words, pack_bits(x, axis=1))
    np.testing.assert_array_equal(p.unpack(np.float32), x)
    assert check_packed(p, "x", ndim=3, axis=1) == p and not padding_set(*p)
    words = p.words.copy()
    words[2, 1, 4] |= np.uint64(1 << 6)          # bit 70 of a 70-long axis: padding
    assert padding_set(words, 70, 1)
    with pytest.raises(ValueError, match=r"x: expected spikes packed along axis 2, got axis 1 \(hint\)"):
        check_packed(p, "x", ndim=3, axis=2, layout="hint")
    with pytest.raises(ValueError, match=r"x: length 200 needs 4 words on axis 1"):
        check_packed(PackedSpikes(p.words, 200, 1), "x", ndim=3, axis=1)
    with pytest.raises(ValueError, match=r"x: expected a positive integer length, got 0"):
        check_packed(PackedSpikes(p.words, 0, 1), "x", ndim=3, axis=1)
    with pytest.raises(ValueError, match=r"spikes: expected binary spikes"):
        pack_spikes(x * 2, axis=1)
