"""refsnn.profiling.OpProfiler: every kind a training step runs is charged, the shares add up,
and the wrappers are gone after the block."""
import time

import numpy as np

from refsnn.functional import cross_entropy_backward, cross_entropy_forward
from refsnn.models import config
from refsnn.models.snnergy import SNNergy
from refsnn.profiling import KINDS, OpProfiler


def _step(model, rng):
    c = model.config
    audio = rng.normal(0, 1, (2, 1, c.image_size, c.image_size)).astype(np.float32)
    visual = rng.uniform(0, 1, (2, c.T, 3, c.image_size, c.image_size)).astype(np.float32)
    model.zero_grad()
    logits = model.forward(audio, visual)
    _, cache = cross_entropy_forward(logits, np.array([0, 1]))
    model.backward(cross_entropy_backward(cache))


def test_profiler_charges_each_kind_and_unwraps():
    model = SNNergy(config("tiny"), seed=0, dtype=np.float32)
    rng = np.random.default_rng(0)
    _step(model, rng)
    with OpProfiler(model) as prof:
        t0 = time.perf_counter()
        _step(model, rng)
        total = time.perf_counter() - t0
    shares = prof.shares(total)
    assert set(shares) == set(KINDS)
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    # the tiny model runs convolutions, fused BN + LIF units, fusion and pooling
    for kind in ("conv", "bn+lif", "fusion", "pool"):
        assert shares[kind] > 0, kind
    # the fused units run on their BatchNorm layers: charged to bn+lif, not to bn
    bn_lif = [m for _, m in model.named_modules() if type(m).__name__ == "BatchNorm"]
    assert bn_lif and all("forward_with_lif" not in vars(m) for m in bn_lif)
    assert all("forward" not in vars(m) and "backward" not in vars(m)
               for _, m in model.named_modules())
