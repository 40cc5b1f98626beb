"""The PyTorch port (examples/torch_port) against SPEC's worked examples and its own math.

Skipped without torch. The port's agreement with refsnn is the conformance suite's job
(tests/test_conformance_torch.py); here the port is checked on its own: SPEC sections 2 and 4
worked examples, the hand-written LIF backward against autograd of a plain loop, the tie rule
of MaxPool, BatchNorm's running statistics, names and shapes of docs/naming.md, checkpoints.
"""
import itertools
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# the tensors here are tiny: one intra-op thread avoids OpenMP spin-waiting, which on a shared
# 2-core machine made these tests 20x slower
torch.set_num_threads(1)

from hypothesis import given, settings, strategies as st  # noqa: E402

from examples.torch_port import (CMQKA, LIFOptions, PortConfig, SNNergy, config, lif, load_checkpoint,  # noqa: E402
                                 model_from_checkpoint, qk_channel, qk_token, save_checkpoint, ssa)
from examples.torch_port.model import frame_indices  # noqa: E402
from examples.torch_port.ops import max_pool  # noqa: E402

F64 = torch.float64
OPTION_GRID = list(itertools.product(("sigmoid", "atan", "fast_sigmoid"), (0.0, -0.2, None),
                                     (True, False), (True, False)))


def t64(values):
    return torch.tensor(values, dtype=F64)


# -- SPEC section 2 worked example ---------------------------------------------------------------

X_WORKED = [0.9, 0.9, 1.6, 0.2, 2.5, -0.4]
DS_WORKED = [1.0, 0.0, -0.5, 1.0, 0.25, 1.0]


def _lif_grad(x_values, ds_values, **options):
    x = t64(x_values).reshape(-1, 1).requires_grad_()
    s = lif(x, **options)
    s.backward(t64(ds_values).reshape(-1, 1))
    return s.detach().flatten().numpy(), x.grad.flatten().numpy()


def test_lif_worked_example_defaults():
    s, dx = _lif_grad(X_WORKED, DS_WORKED)
    np.testing.assert_array_equal(s, [0, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(dx, [0.12159875, -0.11600382, -0.23200764, 0.0962528, 0.08894722,
                                    0.01619189], rtol=0, atol=5e-9)


def test_lif_worked_example_soft_reset_not_detached():
    s, dx = _lif_grad(X_WORKED, DS_WORKED, v_reset=None, detach_reset=False)
    np.testing.assert_array_equal(s, [0, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(dx, [0.16765185, -0.03729349, -0.22822973, 0.10498667, 0.08765439,
                                    0.03111787], rtol=0, atol=5e-9)


def _plain_lif(x, o: LIFOptions, smooth_grad: bool):
    """SPEC section 2 as a plain autograd loop. Forward in smooth mode (the surrogate's primitive)
    so that autograd's derivative is the surrogate; detach_reset detaches S in the reset."""
    a = o.resolved_alpha
    hard = o.v_reset is not None
    r = o.v_reset if hard else 0.0
    v = torch.full_like(x[0], r)
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - r)) / o.tau if o.decay_input else v - (v - r) / o.tau + x[t]
        u = h - o.v_threshold
        if o.surrogate == "sigmoid":
            s = torch.sigmoid(a * u)
        elif o.surrogate == "atan":
            s = 0.5 + torch.atan(math.pi / 2 * a * u) / math.pi
        else:
            s = 0.5 + u / (1 + a * u.abs())
        sr = s.detach() if o.detach_reset else s
        v = h * (1 - sr) + o.v_reset * sr if hard else h - o.v_threshold * sr
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("surrogate,v_reset,detach,decay", OPTION_GRID)
def test_lif_smooth_backward_equals_autograd_of_plain_loop(surrogate, v_reset, detach, decay):
    """In smooth mode the hand-written backward must be the exact derivative of the forward
    (SPEC section 12), for every option."""
    gen = torch.Generator().manual_seed(5)
    o = LIFOptions(tau=1.7, v_threshold=0.8, v_reset=v_reset, decay_input=decay,
                   detach_reset=detach, surrogate=surrogate, spike_fn="smooth")
    x = (torch.randn(5, 7, 3, generator=gen, dtype=F64) * 1.5).requires_grad_()
    ds = torch.randn(5, 7, 3, generator=gen, dtype=F64)
    (g_port,) = torch.autograd.grad(lif(x, o), x, ds)
    x2 = x.detach().clone().requires_grad_()
    s_plain = _plain_lif(x2, o, True)
    (g_plain,) = torch.autograd.grad(s_plain, x2, ds)
    np.testing.assert_allclose(lif(x, o).detach().numpy(), s_plain.detach().numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(g_port.numpy(), g_plain.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "fast_sigmoid"])
@pytest.mark.parametrize("v_reset", [0.0, None])
def test_lif_smooth_gradcheck(surrogate, v_reset):
    """Finite differences (SPEC section 12: smooth mode, detach_reset=False)."""
    gen = torch.Generator().manual_seed(1)
    o = LIFOptions(v_reset=v_reset, detach_reset=False, surrogate=surrogate, spike_fn="smooth")
    x = (torch.randn(4, 6, generator=gen, dtype=F64) * 1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: lif(z, o), (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**31 - 1), st.sampled_from(OPTION_GRID), st.integers(1, 6))
def test_lif_heaviside_backward_is_surrogate_backward(seed, opts, T):
    """Heaviside forward: the gradient equals the plain loop's with the surrogate derivative
    evaluated at the same H (the backward code is shared by both modes)."""
    surrogate, v_reset, detach, decay = opts
    gen = torch.Generator().manual_seed(seed)
    o = LIFOptions(v_reset=v_reset, decay_input=decay, detach_reset=detach, surrogate=surrogate)
    x = (torch.randn(T, 9, generator=gen, dtype=F64) * 2).requires_grad_()
    ds = torch.randn(T, 9, generator=gen, dtype=F64)
    s = lif(x, o)
    (g,) = torch.autograd.grad(s, x, ds)
    # the reference: the recursion of SPEC section 2 with H from a plain forward loop
    hard = v_reset is not None
    r = v_reset if hard else 0.0
    v = torch.full((9,), r, dtype=F64)
    hs, ss = [], []
    xd = x.detach()
    for t in range(T):
        h = v + (xd[t] - (v - r)) / o.tau if decay else v - (v - r) / o.tau + xd[t]
        sp = (h - o.v_threshold >= 0).to(F64)
        v = h * (1 - sp) + v_reset * sp if hard else h - o.v_threshold * sp
        hs.append(h)
        ss.append(sp)
    np.testing.assert_array_equal(s.detach().numpy(), torch.stack(ss).numpy())
    dv = torch.zeros(9, dtype=F64)
    ref = torch.empty(T, 9, dtype=F64)
    a = o.resolved_alpha
    for t in reversed(range(T)):
        u = hs[t] - o.v_threshold
        if surrogate == "sigmoid":
            sg = torch.sigmoid(a * u)
            g_t = a * sg * (1 - sg)
        elif surrogate == "atan":
            g_t = (a / 2) / (1 + (math.pi / 2 * a * u) ** 2)
        else:
            g_t = 1 / (a * u.abs() + 1) ** 2
        if hard:
            dvdh = (1 - ss[t]) if detach else (1 - ss[t]) + (v_reset - hs[t]) * g_t
        else:
            dvdh = torch.ones_like(u) if detach else 1 - o.v_threshold * g_t
        dh = ds[t] * g_t + dv * dvdh
        dv = dh * (1 - 1 / o.tau)
        ref[t] = dh / o.tau if decay else dh
    np.testing.assert_allclose(g.numpy(), ref.numpy(), rtol=1e-13, atol=1e-15)


def test_lif_fires_at_equality():
    # H = 0 + (2 - 0) / 2 = 1 = v_th exactly
    s = lif(t64([[2.0]]))
    assert s.item() == 1.0


# -- SPEC section 4 worked example ----------------------------------------------------------------

def _bits(rows: str):
    return t64([[int(c) for c in r] for r in rows.split()])


Q_WORKED = torch.stack([_bits("101 100 011 001"), _bits("011 001 110 000")]).unsqueeze(1)
K_WORKED = torch.stack([_bits("110 011 101 111"), _bits("101 110 011 100")]).unsqueeze(1)


def _tok(x):  # SPEC [T,B,D,N] <-> port [T,B,N,D]
    return x.transpose(2, 3)


def test_qkta_worked_example():
    z, a = qk_token(_tok(Q_WORKED), _tok(K_WORKED), heads=2)
    # A [T,B,N,h] -> rows = heads, columns = tokens
    np.testing.assert_array_equal(a[:, 0].transpose(1, 2).numpy(),
                                  [[[1, 0, 1], [0, 1, 1]], [[0, 1, 1], [1, 1, 0]]])
    np.testing.assert_array_equal(_tok(z)[:, 0].numpy(),
                                  torch.stack([_bits("100 001 001 011"), _bits("001 010 010 100")]).numpy())


def test_qkca_worked_example():
    z, a = qk_channel(_tok(Q_WORKED), _tok(K_WORKED))
    np.testing.assert_array_equal(a[:, 0].numpy(), [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(_tok(z)[:, 0].numpy(),
                                  torch.stack([K_WORKED[0, 0], _bits("101 110 011 000")]).numpy())


@settings(deadline=None, max_examples=25)
@given(st.integers(0, 2**31 - 1), st.sampled_from([(4, 1), (4, 2), (6, 3), (8, 4)]),
       st.integers(1, 9), st.sampled_from(["token", "channel"]))
def test_qk_gradients_follow_spec(seed, dh, N, kind):
    """dK = A dZ; dA = sum of K dZ over the broadcast axis; dQ = LIF backward of dA broadcast."""
    D, h = dh
    rng = np.random.Generator(np.random.PCG64(seed))
    q = torch.from_numpy(rng.integers(0, 2, (2, 2, N, D)).astype(np.float64)).requires_grad_()
    k = torch.from_numpy(rng.integers(0, 2, (2, 2, N, D)).astype(np.float64)).requires_grad_()
    dz = torch.from_numpy(rng.standard_normal((2, 2, N, D)))
    z, a = qk_token(q, k, h) if kind == "token" else qk_channel(q, k)
    dq, dk = torch.autograd.grad(z, (q, k), dz)
    if kind == "token":
        a_b = a.repeat_interleave(D // h, dim=-1)
        da = (k * dz).reshape(2, 2, N, h, D // h).sum(-1)
        p = q.detach().reshape(2, 2, N, h, D // h).sum(-1)
    else:
        a_b = a.unsqueeze(2).expand_as(k)
        da = (k * dz).sum(2)
        p = q.detach().sum(2)
    np.testing.assert_allclose(dk.numpy(), (a_b * dz).detach().numpy(), rtol=1e-15)
    p = p.clone().requires_grad_()
    (dp,) = torch.autograd.grad(lif(p, v_threshold=0.5), p, da.detach())
    dq_ref = dp.repeat_interleave(D // h, dim=-1) if kind == "token" else dp.unsqueeze(2).expand_as(q)
    np.testing.assert_allclose(dq.numpy(), dq_ref.numpy(), rtol=1e-14, atol=1e-16)


def test_qkta_never_mixes_tokens():
    rng = np.random.Generator(np.random.PCG64(3))
    q = torch.from_numpy(rng.integers(0, 2, (2, 1, 5, 4)).astype(np.float64))
    k = torch.from_numpy(rng.integers(0, 2, (2, 1, 5, 4)).astype(np.float64))
    z, _ = qk_token(q, k, 2)
    q2 = q.clone()
    q2[:, :, 3] = 1 - q2[:, :, 3]
    z2, _ = qk_token(q2, k, 2)
    changed = (z != z2).any(dim=(0, 1, 3))
    assert not changed[[0, 1, 2, 4]].any()


def test_ssa_matches_explicit_formula():
    rng = np.random.Generator(np.random.PCG64(4))
    q, k, v = (torch.from_numpy(rng.integers(0, 2, (2, 1, 6, 4)).astype(np.float64)) for _ in range(3))
    out = ssa(q, k, v, heads=2)
    ref = torch.empty_like(q)
    for i in range(2):
        sl = slice(2 * i, 2 * i + 2)
        ref[..., sl] = (q[..., sl] @ k[..., sl].transpose(-1, -2)) @ v[..., sl] * 0.125
    np.testing.assert_array_equal(out.numpy(), lif(ref, v_threshold=0.5).numpy())


# -- layers (SPEC section 3) ------------------------------------------------------------------------

def test_maxpool_ties_go_to_first_maximum_row_major():
    x = torch.zeros(1, 1, 4, 4, dtype=F64)       # all ties; padding is -inf
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = max_pool(x)
    y.backward(torch.ones_like(y))
    # windows (rows -1..1, cols -1..1), (-1..1, 1..3), (1..3, -1..1), (1..3, 1..3): first max in
    # row-major order is (0,0), (0,1), (1,0), (1,1)
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 1] = expected[1, 0] = expected[1, 1] = 1
    np.testing.assert_array_equal(x.grad[0, 0].numpy(), expected)
    # negative values: padding (-inf) never wins
    x2 = (-torch.ones(1, 1, 3, 3, dtype=F64)).requires_grad_()
    y2 = max_pool(x2)
    np.testing.assert_array_equal(y2.detach().numpy(), -np.ones((1, 1, 2, 2)))


@settings(deadline=None, max_examples=20)
@given(st.integers(0, 2**31 - 1), st.integers(1, 9), st.integers(1, 9))
def test_maxpool_tie_rule_random_integers(seed, H, W):
    rng = np.random.Generator(np.random.PCG64(seed))
    xn = rng.integers(0, 3, (2, 3, H, W)).astype(np.float64)
    x = torch.from_numpy(xn).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = max_pool(x)
    dy = torch.from_numpy(rng.standard_normal(tuple(y.shape)))
    y.backward(dy)
    ref = np.zeros_like(xn)
    Ho, Wo = y.shape[2:]
    for b, c, i, j in itertools.product(range(2), range(3), range(Ho), range(Wo)):
        best, arg = -np.inf, None
        for di, dj in itertools.product(range(3), range(3)):
            r, s = 2 * i - 1 + di, 2 * j - 1 + dj
            if 0 <= r < H and 0 <= s < W and xn[b, c, r, s] > best:
                best, arg = xn[b, c, r, s], (r, s)
        assert y[b, c, i, j].item() == best
        ref[b, c, arg[0], arg[1]] += dy[b, c, i, j].item()
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=1e-15, atol=0)


def test_batchnorm_running_stats_unbiased_and_eval():
    from examples.torch_port.model import BatchNorm
    bn = BatchNorm(3, momentum=0.1, eps=1e-5).double()
    x = torch.randn(2, 4, 5, 3, dtype=F64)   # tokens [T, B, N, C]
    bn(x)
    flat = x.reshape(-1, 3)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * flat.mean(0).numpy(), rtol=1e-13)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * flat.var(0, unbiased=True).numpy(), rtol=1e-13)
    bn.eval()
    y = bn(x)
    ref = (x - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5)
    np.testing.assert_allclose(y.detach().numpy(), ref.numpy(), rtol=1e-13)


def test_batchnorm_repeated_equals_copied_over_time():
    from examples.torch_port.model import BatchNorm
    torch.manual_seed(0)
    a, b = BatchNorm(4, tokens=False).double(), BatchNorm(4, tokens=False).double()
    y = torch.randn(3, 4, 5, 5, dtype=F64)
    once = a.forward_repeated(y, T=3)
    full = b(y.repeat(3, 1, 1, 1))
    np.testing.assert_allclose(full[:3].detach().numpy(), once.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(a.running_var.numpy(), b.running_var.numpy(), rtol=1e-13)
    np.testing.assert_allclose(a.running_mean.numpy(), b.running_mean.numpy(), rtol=1e-12, atol=1e-16)


# -- the model ---------------------------------------------------------------------------------------

def _expected_names(cfg):
    """docs/naming.md written out as code: {name: shape}."""
    names = {}
    C = cfg.stage_dims

    def bn(prefix, c):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            names[f"{prefix}.{suffix}"] = (c,)

    def attn(prefix, c, ssa_=False):
        for p in ("q", "k") + (("v",) if ssa_ else ()):
            names[f"{prefix}.{p}_conv.weight"] = (c, c)
            bn(f"{prefix}.{p}_bn", c)
        names[f"{prefix}.proj_conv.weight"] = (c, c)
        names[f"{prefix}.proj_conv.bias"] = (c,)
        bn(f"{prefix}.proj_bn", c)

    for m in cfg.modalities:
        cin = 1 if m == "audio" else 3
        e = f"{m}.stage1.embed"
        names[f"{e}.proj0_conv.weight"] = (C[0] // 2, cin, 3, 3)
        bn(f"{e}.proj0_bn", C[0] // 2)
        names[f"{e}.proj1_conv.weight"] = (C[0], C[0] // 2, 3, 3)
        names[f"{e}.res_conv.weight"] = (C[0], C[0] // 2, 1, 1)
        for s in (2, 3):
            e = f"{m}.stage{s}.embed"
            names[f"{e}.proj1_conv.weight"] = (C[s - 1], C[s - 2], 3, 3)
            names[f"{e}.res_conv.weight"] = (C[s - 1], C[s - 2], 1, 1)
        for s in (1, 2, 3):
            e = f"{m}.stage{s}.embed"
            names[f"{e}.proj2_conv.weight"] = (C[s - 1], C[s - 1], 3, 3)
            for b in ("proj1_bn", "proj2_bn", "res_bn"):
                bn(f"{e}.{b}", C[s - 1])
            for j in range(cfg.depths[s - 1]):
                blk = f"{m}.stage{s}.blocks.{j}"
                attn(f"{blk}.attn", C[s - 1], s == 3 and cfg.stage3_attention == "ssa")
                H = int(cfg.mlp_ratio * C[s - 1])
                names[f"{blk}.mlp.fc1_conv.weight"] = (H, C[s - 1])
                names[f"{blk}.mlp.fc1_conv.bias"] = (H,)
                bn(f"{blk}.mlp.fc1_bn", H)
                names[f"{blk}.mlp.fc2_conv.weight"] = (C[s - 1], H)
                names[f"{blk}.mlp.fc2_conv.bias"] = (C[s - 1],)
                bn(f"{blk}.mlp.fc2_bn", C[s - 1])
    if cfg.modality == "av" and cfg.fusion == "cmqka":
        for s in (1, 2, 3):
            for d in ("audio_from_visual", "visual_from_audio"):
                attn(f"fusion{s}.{d}", C[s - 1])
            if cfg.cmqka_residual != "fixed":
                shape = (1,) if cfg.cmqka_residual == "scalar" else (C[s - 1],)
                names[f"fusion{s}.alpha"] = shape
                names[f"fusion{s}.beta"] = shape
    names["head.weight"] = (cfg.classes, len(cfg.modalities) * cfg.dim)
    names["head.bias"] = (cfg.classes,)
    return names


@pytest.mark.parametrize("overrides", [
    dict(name="tiny"), dict(name="cpu"), dict(name="paper"),
    dict(name="tiny", stage3_attention="ssa", cmqka_residual="channel"),
    dict(name="tiny", cmqka_residual="fixed"), dict(name="tiny", fusion="concat"),
    dict(name="tiny", modality="audio"), dict(name="tiny", modality="visual"),
])
def test_state_dict_names_and_shapes_follow_naming_doc(overrides):
    cfg = config(**overrides)
    model = SNNergy(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _expected_names(cfg)
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == {k for k in got if k.endswith(("running_mean", "running_var"))}


def test_parameter_counts_of_presets():
    # SPEC/PERFORMANCE figures: tiny 68,576, cpu 266,160, paper 6,439,426
    counts = {n: sum(p.numel() for p in SNNergy(config(n)).parameters()) for n in ("tiny", "cpu", "paper")}
    assert counts == {"tiny": 68576, "cpu": 266160, "paper": 6439426}


def test_frame_indices():
    assert frame_indices(10, 4) == [1, 3, 6, 8]
    assert frame_indices(4, 4) == [0, 1, 2, 3]
    assert frame_indices(1, 3) == [0, 0, 0]


def _inputs(cfg, B, F_, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(B, 1, cfg.image_size, cfg.image_size, generator=gen, dtype=F64)
    v = torch.randn(B, F_, 3, cfg.image_size, cfg.image_size, generator=gen, dtype=F64)
    return a, v


def test_static_visual_input_equals_repeated_frames():
    """A single frame (computed once before the first LIF) equals T identical frames."""
    cfg = config("tiny")
    torch.manual_seed(0)
    m1 = SNNergy(cfg).double()
    m2 = SNNergy(cfg).double()
    m2.load_state_dict(m1.state_dict())
    a, v = _inputs(cfg, 2, 1)
    out1 = m1(a, v)
    out2 = m2(a, v.expand(-1, cfg.T, -1, -1, -1))
    np.testing.assert_allclose(out1.detach().numpy(), out2.detach().numpy(), rtol=1e-9, atol=1e-12)
    for (k, x), (_, y) in zip(m1.state_dict().items(), m2.state_dict().items()):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


def test_model_smooth_mode_directional_derivative():
    """Smooth mode, detach_reset=False (SPEC section 12): the autograd gradient of the whole
    model agrees with a central finite difference along a random direction."""
    cfg = config("tiny", spike_fn="smooth", detach_reset=False, cmqka_residual="channel")
    torch.manual_seed(1)
    model = SNNergy(cfg).double()
    a, v = _inputs(cfg, 2, cfg.T, seed=2)
    labels = torch.tensor([1, 7])
    params = [p for p in model.parameters()]
    state = {k: t.clone() for k, t in model.state_dict().items()}

    def loss_at(shift):
        model.load_state_dict(state)
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(shift * d)
        return torch.nn.functional.cross_entropy(model(a, v), labels)

    gen = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
    loss = loss_at(0.0)
    grads = torch.autograd.grad(loss, params)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    # the loss is strongly curved along a direction that moves all 68k parameters at once:
    # a small step keeps the central difference's O(eps^2) error near 1e-5 relative
    eps = 1e-7
    with torch.no_grad():
        numeric = (loss_at(eps).item() - loss_at(-eps).item()) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric)), (analytic, numeric)


def test_cmqka_residual_parameters_and_directions():
    for residual, shape in (("scalar", (1,)), ("channel", (8,)), ("fixed", None)):
        m = CMQKA(8, 2, residual=residual)
        names = {k for k, _ in m.named_parameters()}
        if shape is None:
            assert "alpha" not in names and "beta" not in names
        else:
            assert m.alpha.shape == shape and m.beta.shape == shape
    # a<-v with mask_from=query_modality takes Q from audio: a zero audio map gives no Q spikes,
    # so no mask and Y_{a<-v} is the projection of zeros for every visual input
    torch.manual_seed(0)
    m = CMQKA(8, 2).double()
    x_a = torch.zeros(2, 2, 4, 8, dtype=F64)
    x_v1 = torch.randint(0, 2, (2, 2, 4, 8)).double()
    x_v2 = torch.randint(0, 2, (2, 2, 4, 8)).double()
    with torch.no_grad():
        m.audio_from_visual.q_bn.bias.fill_(-5.0)   # Q never fires
        y1, _ = m(x_a, x_v1)
        y2, _ = m(x_a, x_v2)
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())


def test_checkpoint_round_trip(tmp_path):
    cfg = config("tiny")
    torch.manual_seed(0)
    model = SNNergy(cfg).double()
    a, v = _inputs(cfg, 2, cfg.T)
    model(a, v)                       # moves the running statistics off their init
    model.eval()
    with torch.no_grad():
        ref = model(a, v)
    path = tmp_path / "ck.npz"
    save_checkpoint(model, path)
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        assert json.loads(str(data["__config__"]))["dim"] == 32
    assert keys - {"__config__"} == set(model.state_dict())
    other = model_from_checkpoint(path, dtype=F64).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(other(a, v).numpy(), ref.numpy())
    path2 = tmp_path / "training.npz"
    save_checkpoint(model, path2, layout="training")
    third = model_from_checkpoint(path2, dtype=F64).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(third(a, v).numpy(), ref.numpy())


def _refsnn_model_and_inputs(overrides):
    """A refsnn SNNergy (float64) with non-trivial BN statistics, and inputs; None without it."""
    snn = pytest.importorskip("refsnn.models.snnergy")
    from refsnn.models import config as refsnn_config
    cfg = refsnn_config("tiny", **overrides)
    model = snn.SNNergy(cfg, seed=3, dtype=np.float64)
    rng = np.random.Generator(np.random.PCG64(4))
    audio = rng.normal(size=(2, 1, 32, 32))
    visual = rng.uniform(size=(2, 2, 3, 32, 32))
    model.train()
    model.forward(audio, visual)            # running statistics move off their init
    model.eval()
    return cfg, model, audio, visual


BASELINES = [dict(fusion="ssa-cross"), dict(fusion="ssa-cross", cmqka_residual="fixed"),
             dict(fusion="mbt"), dict(fusion="mbt", mbt_from_stage=3, mbt_bottlenecks=2),
             dict(fusion="factorized", cmqka_residual="channel", factorized_agg_tokens=3,
                  factorized_fusion_tokens=5)]


@pytest.mark.parametrize("overrides", BASELINES, ids=lambda o: "-".join(map(str, o.values())))
def test_baseline_fusion_state_dict_equals_refsnn(overrides):
    """The baseline fusions of SPEC section 8 (fusion.py) have refsnn's names and shapes
    (docs/fusion.md), so refsnn's state_dicts load one to one."""
    from refsnn.models import config as refsnn_config
    from refsnn.models.snnergy import SNNergy as RefSNNergy
    ref = RefSNNergy(refsnn_config("tiny", **overrides), dtype=np.float64)
    port = SNNergy(config("tiny", **overrides))
    assert {k: tuple(v.shape) for k, v in port.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k for k, _ in port.named_parameters()} == set(ref.parameters())


def test_port_config_refuses_bad_baseline_options():
    for bad in (dict(fusion="nope"), dict(mbt_from_stage=4), dict(mbt_bottlenecks=0),
                dict(factorized_agg_tokens=1), dict(factorized_fusion_tokens=1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            config("tiny", **bad)


def test_port_energy_refuses_the_baselines():
    from examples.torch_port.energy import energy_report
    model = SNNergy(config("tiny", fusion="mbt")).double()
    a, v = _inputs(config("tiny"), 1, 2)
    with pytest.raises(ValueError, match="'mbt'"):
        energy_report(model, a, v)


@pytest.mark.parametrize("overrides", [{}, dict(stage3_attention="ssa", cmqka_residual="channel"),
                                       dict(fusion="ssa-cross"), dict(fusion="mbt", mbt_from_stage=2),
                                       dict(fusion="factorized")])
def test_refsnn_checkpoints_load_into_the_port_and_back(tmp_path, overrides):
    """A refsnn model's checkpoint (plain state_dict and training layout) gives the same eval
    logits in the port; the port's export loads back into refsnn with the same logits."""
    from refsnn.checkpoint import load_model, save_checkpoint as refsnn_save
    cfg, model, audio, visual = _refsnn_model_and_inputs(overrides)
    ref = model.forward(audio, visual)
    plain, training = tmp_path / "plain.npz", tmp_path / "training.npz"
    model.save(plain)
    refsnn_save(training, model, meta={"epoch": 1})
    port_cfg = PortConfig.from_dict(cfg.to_dict())
    for path, port_given in ((plain, port_cfg), (training, None)):
        port = model_from_checkpoint(path, cfg=port_given, dtype=F64).eval()
        with torch.no_grad():
            got = port(torch.from_numpy(audio), torch.from_numpy(visual)).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    # export back: refsnn reads the port's files
    out_plain, out_training = tmp_path / "port_plain.npz", tmp_path / "port_training.npz"
    save_checkpoint(port, out_plain, with_config=False)
    save_checkpoint(port, out_training, layout="training")
    from refsnn.models.snnergy import SNNergy as RefSNNergy
    back = RefSNNergy(cfg, seed=99, dtype=np.float64)
    back.load(out_plain)
    back.eval()
    np.testing.assert_allclose(back.forward(audio, visual), ref, rtol=1e-10, atol=1e-12)
    back2 = load_model(out_training, dtype=np.float64)
    np.testing.assert_allclose(back2.forward(audio, visual), ref, rtol=1e-10, atol=1e-12)


def test_checkpoint_errors_name_every_problem(tmp_path):
    model = SNNergy(config("tiny"))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    sd.pop("head.bias")
    sd["head.weight"] = np.zeros((3, 3), np.float32)
    sd["extra.weight"] = np.zeros(2, np.float32)
    path = tmp_path / "bad.npz"
    np.savez(path, **sd)
    with pytest.raises(ValueError) as info:
        load_checkpoint(model, path)
    msg = str(info.value)
    assert "head.bias" in msg and "head.weight" in msg and "extra.weight" in msg


def test_input_size_checked():
    model = SNNergy(config("tiny"))
    with pytest.raises(ValueError, match="visual"):
        model(torch.zeros(1, 1, 32, 32), torch.zeros(1, 2, 3, 16, 16))


def test_port_config_mirrors_refsnn_config():
    """The port reads refsnn's config dicts (checkpoints, conformance cases): same fields, same
    presets."""
    from dataclasses import fields

    from refsnn.models import config as refsnn_config
    from refsnn.models.configs import Config
    assert {f.name for f in fields(PortConfig)} == {f.name for f in fields(Config)}
    for name in ("tiny", "cpu", "paper"):
        assert config(name).to_dict() == refsnn_config(name).to_dict()
