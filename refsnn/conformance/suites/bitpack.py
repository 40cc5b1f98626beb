"""Suite ``bitpack``: the packed words of SPEC section 4. Words are uint64; bit i of word w
holds element 64*w + i of the packed axis; padding bits are 0. QKTA packs each head's d
channels (a middle axis of ``[T, B, heads, d, N]``), QKCA the N tokens (the last axis)."""
from __future__ import annotations

import numpy as np

from ...kernels.bitpack import pack_bits, unpack_bits
from ..case import Case, case_seed, int_out, rng_for

SUITE = "bitpack"
RULE = "bit i of word w holds element 64*w + i of the packed axis; padding bits are 0"


def pack_case(name, shape, axis, density, description, layout):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    spikes = (rng.random(shape) < density).astype(np.uint8)
    words = pack_bits(spikes, axis=axis)
    return Case(suite=SUITE, name=name, op="pack_bits", spec="SPEC section 4 (bit packing)",
                description=description,
                params={"axis": axis, "length": shape[axis], "word_bits": 64, "bit_order": RULE},
                layout={"spikes": layout, "words": layout + f" with axis {axis} -> ceil(length / 64) words"},
                inputs={"spikes": spikes}, expected={"words": words}, outputs={"words": int_out()},
                seed=seed)


def unpack_case(name, shape, axis, description, layout):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    spikes = (rng.random(shape) < 0.5).astype(np.uint8)
    words = pack_bits(spikes, axis=axis)
    out = unpack_bits(words, shape[axis], axis=axis)
    return Case(suite=SUITE, name=name, op="unpack_bits", spec="SPEC section 4 (bit packing)",
                description=description,
                params={"axis": axis, "length": shape[axis], "word_bits": 64, "bit_order": RULE},
                layout={"words": layout + f" with axis {axis} in words", "spikes": layout},
                inputs={"words": words}, expected={"spikes": out}, outputs={"spikes": int_out()},
                seed=seed)


def cases() -> list[Case]:
    return [
        pack_case("pack-last-130", (3, 4, 130), -1, 0.5, "130 elements on the last axis: two full "
                  "words' worth and a partial third word.", "[P, L]"),
        pack_case("pack-last-64", (5, 64), 1, 0.5, "Exactly one word.", "[P, L]"),
        pack_case("pack-last-1", (6, 1), -1, 0.5, "One element: a single bit per word.", "[P, L]"),
        pack_case("pack-sparse-200", (2, 200), -1, 0.03, "Sparse spikes over four words.", "[P, L]"),
        pack_case("pack-qkca-tokens", (2, 2, 6, 70), 3, 0.5, "QKCA layout: the N = 70 tokens of "
                  "each channel of [T, B, D, N].", "[T, B, D, N]"),
        pack_case("pack-qkta-heads", (2, 2, 3, 65, 5), 3, 0.5, "QKTA layout: each head's d = 65 "
                  "channels of [T, B, heads, d, N] (a middle axis).", "[T, B, heads, d, N]"),
        pack_case("pack-first-axis", (66, 3), 0, 0.5, "Packing axis 0.", "[L, Q]"),
        unpack_case("unpack-qkca-tokens", (2, 2, 6, 70), 3, "Inverse of pack_bits on the token "
                    "axis.", "[T, B, D, N]"),
        unpack_case("unpack-qkta-heads", (2, 1, 2, 65, 4), 3, "Inverse of pack_bits on a middle "
                    "axis.", "[T, B, heads, d, N]"),
    ]
