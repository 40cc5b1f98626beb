"""Writes ``refsnn/kernels/winograd_formulas.py``: the per-channel formulas of Winograd's
F(m x m, 3x3) (m = 2, 4) as straight-line code, from the matrices Bᵀ and Aᵀ, and the Numba
kernels that run them over tiles and channels (one set per m: a kernel taking the formula as
an argument is not cached by Numba). The weights' transform G g Gᵀ needs no kernel: it is one
GEMM with G ⊗ G (``refsnn.kernels.winograd.weight_transform``).

Why generated: LLVM vectorises a kernel's loop over channels only when the tile arithmetic in
its body is straight-line code (a loop over a tile's values, or a tuple indexed by a loop
variable, ran 3-5x slower), and F(4x4, 3x3)'s transforms have 36 values per tile. The
formulas are the matrices' rows written out, terms in index order, zero coefficients skipped,
±1 as an addition or subtraction, every other coefficient a typed constant ``k[i]`` (a Python
number would make Numba compute in float64). The kernels inline them; the NumPy twins in
``refsnn.kernels.winograd`` run the same functions' Python code on arrays, so the two agree
bit for bit by construction; tests/test_winograd.py checks the formulas against the matrices
and the checked-in file against this generator's output.

    python -m refsnn.kernels.winograd_codegen      # rewrite the file after changing MATRICES
"""
from __future__ import annotations

import os
from fractions import Fraction as Fr

# Bᵀ (a x a), G (a x 3), Aᵀ (m x a) of F(m x m, 3x3), a = m + 2 (Lavin and Gray 2016; m = 4
# with the interpolation points 0, ±1, ±2, ∞)
MATRICES = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [Fr(1, 2), Fr(1, 2), Fr(1, 2)], [Fr(1, 2), Fr(-1, 2), Fr(1, 2)], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[Fr(1, 4), 0, 0], [Fr(-1, 6), Fr(-1, 6), Fr(-1, 6)], [Fr(-1, 6), Fr(1, 6), Fr(-1, 6)],
         [Fr(1, 24), Fr(1, 12), Fr(1, 6)], [Fr(1, 24), Fr(-1, 12), Fr(1, 6)], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "winograd_formulas.py")


def transpose(T):
    return [list(col) for col in zip(*T)]


def constants(m):
    """The coefficients other than 0 and ±1 of F(m, 3)'s Bᵀ and Aᵀ, by absolute value: the
    order of the typed constants ``k`` the formulas take."""
    BT, _, AT = MATRICES[m]
    values = sorted({abs(Fr(v)) for T in (BT, AT) for row in T for v in row} - {0, 1})
    return values


def combination(row, names, consts):
    """sum_i row[i] * names[i] as an expression: index order, zeros skipped, ±1 as +/-."""
    out = ""
    for coef, name in zip(row, names):
        coef = Fr(coef)
        if coef == 0:
            continue
        term = name if abs(coef) == 1 else f"k[{consts.index(abs(coef))}] * {name}"
        if not out:
            out = term if coef > 0 else f"-{term}"
        else:
            out += f" + {term}" if coef > 0 else f" - {term}"
    return out


def grouped(name, T_rows, T_cols, load, store, args, doc, consts):
    """Functions ``{name}_{p}``, one per row p of T_rows: each computes
    rows[p][j] = sum_i T_rows[p][i] src[i][j] (loading only the src[i][j] it needs, with
    ``load(i, j)``) and stores out[p][q] = sum_j T_cols[q][j] rows[p][j] with
    ``store(p, q, expr)``. One group per channel loop: a loop body with more than 8 output
    streams was left scalar by LLVM (its runtime alias checks), at 1/4-1/8 the speed."""
    out = []
    n_src = len(T_rows[0])
    n_cols = len(T_cols[0])
    for p, row in enumerate(T_rows):
        used = [i for i in range(n_src) if row[i] != 0]
        lines = [f"    s{i}_{j} = {load(i, j)}" for i in used for j in range(n_cols)]
        rows = []
        for j in range(n_cols):
            rows.append(f"r{j}")
            lines.append(f"    r{j} = {combination(row, [f's{i}_{j}' for i in range(n_src)], consts)}")
        lines += [f"    {store(p, q, combination(col, rows, consts))}" for q, col in enumerate(T_cols)]
        out.append("\n".join(["@nb.njit(inline=\"always\")", f"def {name}_{p}({args}):",
                              f'    """{doc} (row {p})"""'] + lines) + "\n")
    return out


def formulas(m):
    """Source of the formula groups of F(m x m, 3x3), and how many groups each transform has."""
    BT, _, AT = MATRICES[m]
    a = m + 2
    consts = constants(m)
    B, A_ = transpose(BT), transpose(AT)
    f = f"F({m}x{m}, 3x3)"
    def tiles_to_stack(T):      # the a x a (or m x m) tile buffer -> the stack's column t
        return (T, T, lambda i, j: f"src[{i}, {j}, c]", lambda p, q, e: f"dst[{p * a + q}, t, c] = {e}",
                "src, c, dst, t, k")

    def stack_to_tiles(T, bias=""):     # the stack's column t -> the tile buffer
        return (T, T, lambda i, j: f"src[{i * a + j}, t, c]", lambda p, q, e: f"dst[{p}, {q}, c] = {e}{bias}",
                "src, t, c, dst" + (", b" if bias else "") + ", k")

    specs = [   # name, (T_rows, T_cols, load(i, j), store(p, q, expr), args), doc
        ("input", tiles_to_stack(BT), f"dst[:, t, c] = Bᵀ d B, d = src[:, :, c], {f}"),
        ("output", stack_to_tiles(AT, " + b"), f"dst[:, :, c] = Aᵀ M A + b, M = src[:, t, c], {f}"),
        ("grad_output", tiles_to_stack(A_), f"dst[:, t, c] = A dY Aᵀ, dY = src[:, :, c], {f}"),
        ("input_grad", stack_to_tiles(B), f"dst[:, :, c] = B dV Bᵀ, dV = src[:, t, c], {f}"),
    ]
    out, counts = [], {}
    for name, (T_rows, T_cols, load, store, args), doc in specs:
        out += grouped(f"{name}_{m}", T_rows, T_cols, load, store, args, doc, consts)
        counts[name] = len(T_rows)
    return out, counts


def calls(name, m, counts, args, indent, loop=None):
    """The kernel lines calling every group of ``name``, each in its own ``loop`` (if any)."""
    lines = []
    for p in range(counts[name]):
        if loop:
            lines += [indent + loop, indent + f"    {name}_{m}_{p}({args})"]
        else:
            lines.append(indent + f"{name}_{m}_{p}({args})")
    return "\n".join(lines)


COMMON = """
# The buffers' layouts, shared by the kernels of every m: an NCHW sample to and from a buffer
# holding column w at [w % m, w // m] (C' values a column), and the tile windows read from it.

@nb.njit(inline="always")
def _to_columns(a, n, offset, m, Cp, buf):
    \"\"\"buf[offset + h, (offset + w) % m, ((offset + w) // m) C' + c] = a[n, c, h, w]
    (a ``[N, C, H, W]``).\"\"\"
    N, C, H, W = a.shape
    for h in range(H):
        for c in range(C):
            src = a[n, c, h]
            for w in range(W):
                buf[offset + h, (offset + w) % m, ((offset + w) // m) * Cp + c] = src[w]


@nb.njit(inline="always")
def _from_columns(buf, offset, m, Cp, out, n):
    \"\"\"out[n, c, h, w] = buf[offset + h, (offset + w) % m, ((offset + w) // m) C' + c].\"\"\"
    N, C, H, W = out.shape
    for h in range(H):
        for c in range(C):
            dst = out[n, c, h]
            for w in range(W):
                dst[w] = buf[offset + h, (offset + w) % m, ((offset + w) // m) * Cp + c]


@nb.njit(inline="always")
def _windows(buf, ti, tj0, size, m, Cp, L, d):
    \"\"\"d[i, j, :] = the values at (i, j) of the size x size windows of L / C' tiles of tile
    row ti from tile column tj0, side by side (consecutive in the buffer).\"\"\"
    for i in range(size):
        for j in range(size):
            src = buf[m * ti + i, j % m]
            dst = d[i, j]
            base = (tj0 + j // m) * Cp
            for e in range(L):      # a loop: a slice assignment costs ~100 ns
                dst[e] = src[base + e]
"""


KERNELS = """
# The kernels' arrays are C-contiguous and the formulas read and write whole vectors of channels
# through them: with a strided (layout 'A') array Numba passes the innermost stride at run time
# and LLVM leaves the channel loop scalar. The kernels read and write the NCHW maps themselves,
# one sample at a time through a channels-last buffer that stays in cache (laying out a whole
# chunk first wrote and re-read it from memory: 10-20% slower at the `paper` shapes). B
# consecutive tiles of a tile row go through the formulas together, their channels side by side
# (``[.., B C']``, the stacks seen as ``[a², rows / B, B C']``), so that each formula loop runs
# over B C' values: with few channels a loop's run-time alias checks cost more than its
# arithmetic (``winograd.tiles_per_block``). The buffers hold column w at ``[w % {m}, w // {m}]``:
# the values a window position takes in B consecutive tiles are then B C' consecutive values,
# copied to and from the tile buffers by one loop.

@nb.njit(nogil=True, cache=True)
def input_transform_{m}(x, n0, n1, B, V, k):
    \"\"\"V[:, t, :] = Bᵀ d B of every tile d of the samples n0:n1 of x ``[N, C, H, W]`` with a
    border of zeros (t counts the tiles from sample n0; V ``[{a2}, >= tiles, C']``, C' >= C: the
    extra channels are transforms of zeros; B divides the tiles per row and V's rows).\"\"\"
    N, C, H, W = x.shape
    Cp = V.shape[2]
    th, tw = (H + {m} - 1) // {m}, (W + {m} - 1) // {m}
    L = B * Cp
    VB = V.reshape(({a2}, V.shape[1] // B, L))
    xp = np.zeros(({m} * th + 2, {m}, (tw + 1) * Cp), dtype=x.dtype)   # padded, column w at [w % {m}, w // {m}]
    d = np.empty(({a}, {a}, L), dtype=x.dtype)
    for n in range(n0, n1):
        _to_columns(x, n, 1, {m}, Cp, xp)
        for ti in range(th):
            for tj0 in range(0, tw, B):
                blk = ((n - n0) * th + ti) * (tw // B) + tj0 // B
                _windows(xp, ti, tj0, {a}, {m}, Cp, L, d)
{calls_input}


@nb.njit(nogil=True, cache=True)
def output_transform_{m}(M, n0, n1, B, bias, has_bias, y, k):
    \"\"\"y[n] (``[N, O, H, W]``) for the samples n0:n1: Aᵀ M[:, t] A (+ bias) of every tile t,
    cropped to H x W (M ``[{a2}, >= tiles, O']``, O' >= O; bias ``[B O']``, the bias of the O'
    channels repeated B times; B as for the input).\"\"\"
    N, O, H, W = y.shape
    Op = M.shape[2]
    th, tw = (H + {m} - 1) // {m}, (W + {m} - 1) // {m}
    L = B * Op
    MB = M.reshape(({a2}, M.shape[1] // B, L))
    zero = y.dtype.type(0)
    yp = np.empty(({m} * th, {m}, tw * Op), dtype=y.dtype)              # column w at [w % {m}, w // {m}]
    tile = np.empty(({m}, {m}, L), dtype=y.dtype)
    for n in range(n0, n1):
        for ti in range(th):
            for tj0 in range(0, tw, B):
                blk = ((n - n0) * th + ti) * (tw // B) + tj0 // B
{calls_output}
                for i in range({m}):
                    for j in range({m}):
                        src = tile[i, j]
                        dst = yp[{m} * ti + i, j]
                        base = tj0 * Op
                        for e in range(L):
                            dst[base + e] = src[e]
        _from_columns(yp, 0, {m}, Op, y, n)


@nb.njit(nogil=True, cache=True)
def grad_output_transform_{m}(dy, n0, n1, B, dM, k):
    \"\"\"dM[:, t, :] = A dY Aᵀ of every {m}x{m} tile dY of the samples n0:n1 of dy ``[N, O, H, W]``
    (zero beyond H x W; dM ``[{a2}, >= tiles, O']``, O' >= O; B as for the input).\"\"\"
    N, O, H, W = dy.shape
    Op = dM.shape[2]
    th, tw = (H + {m} - 1) // {m}, (W + {m} - 1) // {m}
    L = B * Op
    dMB = dM.reshape(({a2}, dM.shape[1] // B, L))
    dyp = np.zeros(({m} * th, {m}, tw * Op), dtype=dy.dtype)            # column w at [w % {m}, w // {m}]
    tile = np.empty(({m}, {m}, L), dtype=dy.dtype)
    for n in range(n0, n1):
        _to_columns(dy, n, 0, {m}, Op, dyp)
        for ti in range(th):
            for tj0 in range(0, tw, B):
                blk = ((n - n0) * th + ti) * (tw // B) + tj0 // B
                _windows(dyp, ti, tj0, {m}, {m}, Op, L, tile)
{calls_grad_output}


@nb.njit(nogil=True, cache=True)
def input_grad_transform_{m}(dV, n0, n1, B, dx, k):
    \"\"\"dx[n] (``[N, C, H, W]``) for the samples n0:n1: the sum over the sample's tiles, in
    order, of B dV[:, t] Bᵀ, each added into its {a}x{a} window of the padded map, without the
    border (dV ``[{a2}, >= tiles, C']``, C' >= C; B as for the input). A block adds its
    windows' last two columns first: each value then receives its terms in tile order, as
    when the tiles are added one by one.\"\"\"
    N, C, H, W = dx.shape
    Cp = dV.shape[2]
    th, tw = (H + {m} - 1) // {m}, (W + {m} - 1) // {m}
    L = B * Cp
    dVB = dV.reshape(({a2}, dV.shape[1] // B, L))
    dxp = np.empty(({m} * th + 2, {m}, (tw + 1) * Cp), dtype=dx.dtype)  # column w at [w % {m}, w // {m}]
    dd = np.empty(({a}, {a}, L), dtype=dx.dtype)
    for n in range(n0, n1):
        dxp[:] = 0
        for ti in range(th):
            for tj0 in range(0, tw, B):
                blk = ((n - n0) * th + ti) * (tw // B) + tj0 // B
{calls_input_grad}
                for jj in range({a}):
                    j = (jj + {m}) % {a}          # columns {m}, {m} + 1 first, then 0 .. {m} - 1
                    base = (tj0 + j // {m}) * Cp
                    for i in range({a}):
                        row = dxp[{m} * ti + i, j % {m}]
                        add = dd[i, j]
                        for e in range(L):
                            row[base + e] += add[e]
        _from_columns(dxp, 1, {m}, Cp, dx, n)
"""


def source() -> str:
    head = ['"""Winograd F(m x m, 3x3) formulas, one tile and one channel at a time: GENERATED by',
            "``python -m refsnn.kernels.winograd_codegen`` from its matrices; do not edit (see there).",
            "",
            "``k`` is the tuple of the coefficients other than 0 and ±1, in the array's dtype:",
            *[f"m = {m}: k = {tuple(str(v) for v in constants(m))}" for m in MATRICES],
            '"""',
            "import numba as nb", "import numpy as np", "",
            "CONSTANTS = {" + ", ".join(f"{m}: ({''.join(f'{v.numerator} / {v.denominator}, ' for v in constants(m))})"
                                         for m in MATRICES) + "}", ""]
    body, kernels, groups = [], [], []
    for m in MATRICES:
        funcs, counts = formulas(m)
        body += funcs
        i16 = " " * 16
        kernels.append(KERNELS.format(
            m=m, a=m + 2, a2=(m + 2) ** 2,
            calls_input=calls("input", m, counts, "d, c, VB, blk, k", i16, "for c in range(L):"),
            calls_output=calls("output", m, counts, "MB, blk, o, tile, bias[o] if has_bias else zero, k", i16,
                               "for o in range(L):"),
            calls_grad_output=calls("grad_output", m, counts, "tile, o, dMB, blk, k", i16, "for o in range(L):"),
            calls_input_grad=calls("input_grad", m, counts, "dVB, blk, c, dd, k", i16, "for c in range(L):")))
        groups += [f"    ({name!r}, {m}): ({', '.join(f'{name}_{m}_{p}' for p in range(n))},),"
                   for name, n in counts.items()]
    body.append("# every transform's groups, in order (the NumPy twins call them in turn)\nGROUPS = {\n"
                + "\n".join(groups) + "\n}\n")
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + COMMON + "".join(kernels)


def main() -> None:
    with open(PATH, "w") as f:
        f.write(source())


if __name__ == "__main__":
    main()
