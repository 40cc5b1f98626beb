"""Process settings of refsnn.runtime, each checked in a fresh interpreter."""
import os
import subprocess
import sys

import pytest


def run(code, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "REFSNN_KEEP_FREED_MEMORY", "REFSNN_VECTORIZE_CHECKS")}
    full.update(env)
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          env=full, timeout=120)


def test_import_sets_a_passive_wait_policy_without_warning():
    r = run("import os, refsnn, numba; numba.set_num_threads(1); print(os.environ['OMP_WAIT_POLICY'])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "passive" and "RuntimeWarning" not in r.stderr


def test_a_user_policy_is_kept():
    r = run("import os, refsnn; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="active")
    assert r.stdout.strip() == "active"


def test_warns_when_numba_threads_started_first():
    r = run("import numba; numba.set_num_threads(1)\nimport numba.np.ufunc.parallel as p\n"
            "assert p._threading_layer == 'omp'\nimport refsnn")
    if "AssertionError" in r.stderr:
        pytest.skip("Numba's OpenMP threading layer is not the one in use here")
    assert "OMP_WAIT_POLICY" in r.stderr and "RuntimeWarning" in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_applies_and_can_be_switched_off():
    code = "import refsnn.runtime as r; print(r.keep_freed_memory())"
    assert run(code).stdout.strip() == "True"
    assert run(code, REFSNN_KEEP_FREED_MEMORY="0").stdout.strip() == "False"


_MANY_STREAMS = """
import refsnn, numba, numpy as np
src = "def f(d, V, t):\\n    for c in range(d.shape[2]):\\n" + "".join(
    f"        V[{k}, t, c] = d[0, {k}, c] - d[2, {k}, c] + d[4, {k}, c] - d[1, {(k + 1) % 6}, c]\\n"
    for k in range(6))
scope = {}
exec(src, scope)
f = numba.njit(scope["f"])
f(np.zeros((6, 6, 48), np.float32), np.zeros((6, 4, 48), np.float32), 1)
print(refsnn.runtime.allow_vector_memory_checks(), "<8 x float>" in f.inspect_llvm(f.signatures[0]))
"""


def test_channel_loops_with_many_streams_are_vectorised_and_can_be_left_alone():
    """A loop writing 6 rows and reading 24 (a Winograd transform's row group): LLVM vectorises
    it with refsnn's setting, and leaves it scalar at its default (REFSNN_VECTORIZE_CHECKS=0)."""
    assert run(_MANY_STREAMS).stdout.split() == ["True", "True"]
    assert run(_MANY_STREAMS, REFSNN_VECTORIZE_CHECKS="0").stdout.split() == ["False", "False"]


def test_threads_for_runs_small_work_on_one_thread_and_restores():
    import numba
    from refsnn.runtime import SERIAL_WORK, threads_for
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    before = numba.get_num_threads()
    with threads_for(SERIAL_WORK - 1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with threads_for(SERIAL_WORK):
        assert numba.get_num_threads() == before
    try:
        with threads_for(1):
            raise KeyError("inside")
    except KeyError:
        pass
    assert numba.get_num_threads() == before
