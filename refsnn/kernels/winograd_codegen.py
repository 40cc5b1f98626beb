"""Writes ``refsnn/kernels/winograd_formulas.py``: the per-channel formulas of Winograd's
F(m x m, 3x3) (m = 2, 4) as straight-line code, from the matrices Bᵀ, G, Aᵀ, and the Numba
kernels that run them over tiles and channels (one set per m: a kernel taking the formula as
an argument is not cached by Numba).

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
    """The coefficients other than 0 and ±1 of F(m, 3)'s matrices, by absolute value: the
    order of the typed constants ``k`` the formulas take."""
    values = sorted({abs(Fr(v)) for T in MATRICES[m] for row in T for v in row} - {0, 1})
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
    BT, G, AT = MATRICES[m]
    a = m + 2
    consts = constants(m)
    B, A_, Gt = transpose(BT), transpose(AT), transpose(G)
    f = f"F({m}x{m}, 3x3)"
    specs = [
        # name, T_rows, T_cols, load(i, j), store(p, q, expr), args, doc
        ("input", BT, BT, lambda i, j: f"src[{i}, {j}, c]",
         lambda p, q, e: f"dst[{p * a + q}, t, c] = {e}", "src, c, dst, t, k",
         f"dst[:, t, c] = Bᵀ d B, d = src[:, :, c], {f}"),
        ("output", AT, AT, lambda i, j: f"src[{i * a + j}, t, c]",
         lambda p, q, e: f"dst[{p}, {q}, c] = {e} + b", "src, t, c, dst, b, k",
         f"dst[:, :, c] = Aᵀ M A + b, M = src[:, t, c], {f}"),
        ("grad_output", A_, A_, lambda i, j: f"src[{i}, {j}, c]",
         lambda p, q, e: f"dst[{p * a + q}, t, c] = {e}", "src, c, dst, t, k",
         f"dst[:, t, c] = A dY Aᵀ, dY = src[:, :, c], {f}"),
        ("input_grad", B, B, lambda i, j: f"src[{i * a + j}, t, c]",
         lambda p, q, e: f"dst[{p}, {q}, c] = {e}", "src, t, c, dst, k",
         f"dst[:, :, c] = B dV Bᵀ, dV = src[:, t, c], {f}"),
        ("weight", G, G, lambda i, j: f"src[{i}, {j}]",
         lambda p, q, e: f"dst[{p * a + q}, c, o] = {e}", "src, dst, c, o, k",
         f"dst[:, c, o] = G g Gᵀ, g = src, {f}"),
        ("weight_adjoint", Gt, Gt, lambda i, j: f"src[{i * a + j}, c, o]",
         lambda p, q, e: f"dst[{p}, {q}] = {e}", "src, c, o, dst, k",
         f"dst = Gᵀ dU G, dU = src[:, c, o], {f}"),
    ]
    out, counts = [], {}
    for name, T_rows, T_cols, load, store, args, doc in specs:
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


KERNELS = """
# The kernels' arrays are C-contiguous and the formulas read and write whole vectors of channels
# through them: with a strided (layout 'A') array Numba passes the innermost stride at run time
# and LLVM leaves the channel loop scalar. Each tile goes through a small local buffer, which
# keeps the formulas' indexing the same for the kernels and the twins.

@nb.njit(nogil=True, cache=True)
def input_transform_{m}(xp, V, k):
    \"\"\"V[:, t, :] = Bᵀ d B of every tile d of the padded channels-last xp ``[n, Hp, Wp, C]``
    (V ``[{a2}, >= tiles, C]``).\"\"\"
    n_, Hp, Wp, C = xp.shape
    th, tw = (Hp - 2) // {m}, (Wp - 2) // {m}
    d = np.empty(({a}, {a}, C), dtype=xp.dtype)
    for n in range(n_):
        for ti in range(th):
            for tj in range(tw):
                t = (n * th + ti) * tw + tj
                for i in range({a}):
                    for j in range({a}):
                        src = xp[n, {m} * ti + i, {m} * tj + j]
                        dst = d[i, j]
                        for c in range(C):      # a loop: a slice assignment costs ~100 ns
                            dst[c] = src[c]
{calls_input}


@nb.njit(nogil=True, cache=True)
def output_transform_{m}(M, th, tw, bias, has_bias, yp, k):
    \"\"\"yp[n, {m}ti:{m}ti+{m}, {m}tj:{m}tj+{m}, :] = Aᵀ M[:, t] A (+ bias) for every tile t.\"\"\"
    n_, Hp, Wp, O = yp.shape
    zero = yp.dtype.type(0)
    y = np.empty(({m}, {m}, O), dtype=yp.dtype)
    for n in range(n_):
        for ti in range(th):
            for tj in range(tw):
                t = (n * th + ti) * tw + tj
{calls_output}
                for i in range({m}):
                    for j in range({m}):
                        src = y[i, j]
                        dst = yp[n, {m} * ti + i, {m} * tj + j]
                        for o in range(O):
                            dst[o] = src[o]


@nb.njit(nogil=True, cache=True)
def grad_output_transform_{m}(dyp, dM, k):
    \"\"\"dM[:, t, :] = A dY Aᵀ of every {m}x{m} tile dY of dyp ``[n, {m}th, {m}tw, O]``.\"\"\"
    n_, Hp, Wp, O = dyp.shape
    th, tw = Hp // {m}, Wp // {m}
    dy = np.empty(({m}, {m}, O), dtype=dyp.dtype)
    for n in range(n_):
        for ti in range(th):
            for tj in range(tw):
                t = (n * th + ti) * tw + tj
                for i in range({m}):
                    for j in range({m}):
                        src = dyp[n, {m} * ti + i, {m} * tj + j]
                        dst = dy[i, j]
                        for o in range(O):
                            dst[o] = src[o]
{calls_grad_output}


@nb.njit(nogil=True, cache=True)
def input_grad_transform_{m}(dV, th, tw, dxp, k):
    \"\"\"dxp[n] = the sum over tiles, in order, of B dV[:, t] Bᵀ, each added into its
    {a}x{a} window; dxp ``[n, {m}th + 2, {m}tw + 2, C]`` overwritten.\"\"\"
    n_, Hp, Wp, C = dxp.shape
    dxp[:] = 0
    dd = np.empty(({a}, {a}, C), dtype=dxp.dtype)
    for n in range(n_):
        for ti in range(th):
            for tj in range(tw):
                t = (n * th + ti) * tw + tj
{calls_input_grad}
                for i in range({a}):
                    for j in range({a}):
                        row = dxp[n, {m} * ti + i, {m} * tj + j]
                        add = dd[i, j]
                        for c in range(C):
                            row[c] += add[c]


@nb.njit(nogil=True, cache=True)
def weight_transform_{m}(weight, Ut, k):
    \"\"\"Ut[:, c, o] = G g Gᵀ of every filter g = weight[o, c] (weight ``[O, C, 3, 3]``).\"\"\"
    O, C = weight.shape[:2]
    for c in range(C):
        for o in range(O):
            g = weight[o, c]
{calls_weight}


@nb.njit(nogil=True, cache=True)
def weight_transform_adjoint_{m}(dUt, dweight, k):
    \"\"\"dweight[o, c] = Gᵀ dU G of every tile dU = dUt[:, c, o] (dweight ``[O, C, 3, 3]``).\"\"\"
    O, C = dweight.shape[:2]
    for c in range(C):
        for o in range(O):
            g = dweight[o, c]
{calls_weight_adjoint}
"""


def source() -> str:
    head = ['"""Winograd F(m x m, 3x3) formulas, one tile and one channel at a time: GENERATED by',
            "``python -m refsnn.kernels.winograd_codegen`` from its matrices; do not edit (see there).",
            "",
            "``k`` is the tuple of the coefficients other than 0 and ±1, in the array's dtype:",
            *[f"m = {m}: k = {tuple(str(v) for v in constants(m))}" for m in MATRICES],
            '"""',
            "import numba as nb", "import numpy as np", "",
            "CONSTANTS = {" + ", ".join(f"{m}: ({', '.join(f'{v.numerator} / {v.denominator}' for v in constants(m))},)"
                                         for m in MATRICES) + "}", ""]
    body, kernels, groups = [], [], []
    for m in MATRICES:
        funcs, counts = formulas(m)
        body += funcs
        i16, i12 = " " * 16, " " * 12
        kernels.append(KERNELS.format(
            m=m, a=m + 2, a2=(m + 2) ** 2,
            calls_input=calls("input", m, counts, "d, c, V, t, k", i16, "for c in range(C):"),
            calls_output=calls("output", m, counts, "M, t, o, y, bias[o] if has_bias else zero, k", i16,
                               "for o in range(O):"),
            calls_grad_output=calls("grad_output", m, counts, "dy, o, dM, t, k", i16, "for o in range(O):"),
            calls_input_grad=calls("input_grad", m, counts, "dV, t, c, dd, k", i16, "for c in range(C):"),
            calls_weight=calls("weight", m, counts, "g, Ut, c, o, k", i12),
            calls_weight_adjoint=calls("weight_adjoint", m, counts, "dUt, c, o, g, k", i12)))
        groups += [f"    ({name!r}, {m}): ({', '.join(f'{name}_{m}_{p}' for p in range(n))},),"
                   for name, n in counts.items()]
    body.append("# every transform's groups, in order (the NumPy twins call them in turn)\nGROUPS = {\n"
                + "\n".join(groups) + "\n}\n")
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "".join(kernels)


def main() -> None:
    with open(PATH, "w") as f:
        f.write(source())


if __name__ == "__main__":
    main()
