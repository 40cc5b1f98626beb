"""A prepared cache in a read-only folder, or one that prepare cannot write: a complete cache is
only read (by loading and by prepare, which then rewrites nothing, not even report.json); an
incomplete one is a sentence naming the path, from prepare and from train. The damaged-cache
message of train names the file and a command that runs as printed. (Issue 15; the damage and
staleness checks themselves: test_cache_integrity.py.)"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import pytest

import datafactory as fac
from refsnn.data import load_dataset
from refsnn.data.integrity import CacheDamaged
from refsnn.data.prepare import CacheWriteError, prepare

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
S, F = 16, 2
TINY = 32                   # the tiny config's image size, for the train command line
SPLITS = {"train": [("Church bell", "bell1"), ("Dog", "dog1"), ("Truck", "truck1")],
          "val": [("Dog", "dog2")], "test": [("Truck", "truck2"), ("Church bell", "bell2")]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fac.make_ave(tmp_path_factory.mktemp("ave"), SPLITS)


def _prepared(root, tmp_path_factory, size):
    cache = str(tmp_path_factory.mktemp(f"pristine{size}"))
    return cache, prepare("ave", root, cache, progress=False, image_size=size, num_frames=F).cache_dir


@pytest.fixture(scope="module")
def pristine(root, tmp_path_factory):
    return _prepared(root, tmp_path_factory, S)


@pytest.fixture(scope="module")
def pristine_tiny(root, tmp_path_factory):
    return _prepared(root, tmp_path_factory, TINY)


def _copy_of(pristine, tmp_path):
    """A private copy: ``(cache root, cache folder)``."""
    shutil.copytree(pristine[0], tmp_path / "c")
    return str(tmp_path / "c"), os.path.join(str(tmp_path / "c"), os.path.relpath(pristine[1], pristine[0]))


@pytest.fixture
def cache(pristine, tmp_path):
    return _copy_of(pristine, tmp_path)


@pytest.fixture
def cache_tiny(pristine_tiny, tmp_path):
    return _copy_of(pristine_tiny, tmp_path)


def _prepare_args(root, cache_root, size=S):
    return ["-m", "refsnn.data.prepare", "--data", "ave", "--root", root, "--cache", cache_root,
            "--image-size", str(size), "--num-frames", str(F), "--no-progress"]


def _train_args(cache_root, *extra):
    return ["-m", "refsnn.train", "--data", "ave", "--cache", cache_root, "--config", "tiny", "--data-option",
            f"num_frames={F}", "--epochs", "1", "--out", os.path.join(os.path.dirname(cache_root), "run"),
            "--no-progress", *extra]


def _drop_dac_override():
    """In the child: without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, root obeys file modes too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:               # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_read_only(args, folder):
    """``python args`` with ``folder`` read-only (as root too, see above); the modes are restored."""
    subprocess.run(["chmod", "-R", "a-w", folder], check=True)
    try:
        preexec = _drop_dac_override if os.geteuid() == 0 else None
        probe = subprocess.run([sys.executable, "-c", f"open({os.path.join(folder, 'probe')!r}, 'w')"],
                               preexec_fn=preexec, capture_output=True)
        if probe.returncode == 0:
            pytest.skip("this user writes into read-only folders")
        return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                              preexec_fn=preexec)
    finally:
        subprocess.run(["chmod", "-R", "u+w", folder], check=True)


def _stamps(folder):
    return {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in sorted(os.listdir(folder))
            if f.endswith((".json", ".npy"))}


def test_prepare_again_rewrites_nothing(root, cache):
    cache_root, folder = cache
    before = _stamps(folder)
    assert "report.json" in before and "index.json" in before
    report = prepare("ave", root, cache_root, progress=False, image_size=S, num_frames=F)
    assert (report.decoded, report.reused) == (0, 6)
    assert _stamps(folder) == before                      # report.json included


def test_a_complete_read_only_cache_is_usable(root, cache):
    cache_root, folder = cache
    before = open(os.path.join(folder, "report.json")).read()
    proc = _run_read_only(_prepare_args(root, cache_root), cache_root)
    assert proc.returncode == 0, proc.stderr
    assert "0 decoded now, 6 already in the cache" in proc.stdout and proc.stderr == ""
    assert open(os.path.join(folder, "report.json")).read() == before
    code = (f"from refsnn.data import load_dataset; ds = load_dataset('ave', 'test', cache={cache_root!r}, "
            f"image_size={S}, num_frames={F}); print(ds.clip_ids, float(ds.arrays([0, 1])[1].mean()) > 0)")
    proc = _run_read_only(["-c", code], cache_root)
    assert proc.returncode == 0 and proc.stdout.strip() == "['truck2', 'bell2'] True", proc.stderr


@pytest.mark.parametrize("remove, named", [
    (("index.json", "clips/dog1.npz"), "clips/dog1.npz"),   # a clip to decode: its file cannot be written
    (("index.json",), ""),                                  # every clip there: the arrays cannot be stacked
    (("params.json", "index.json"), "params.json"),
])
def test_an_incomplete_read_only_cache_is_a_sentence(root, cache, remove, named):
    cache_root, folder = cache
    for f in remove:
        os.remove(os.path.join(folder, f))
    proc = _run_read_only(_prepare_args(root, cache_root), cache_root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    path = os.path.join(folder, named) if named else folder
    assert f"error: cannot write in the cache: {path}: Permission denied. --cache must name a writable folder" \
        in proc.stderr


def test_train_on_an_incomplete_read_only_cache_is_a_sentence(root, cache_tiny):
    cache_root, folder = cache_tiny
    os.remove(os.path.join(folder, "index.json"))
    os.remove(os.path.join(folder, "clips", "dog1.npz"))
    with pytest.raises(ValueError, match=rf"the cache {folder} is incomplete"):
        load_dataset("ave", "train", cache=cache_root, image_size=TINY, num_frames=F)
    proc = _run_read_only(_train_args(cache_root, "--root", root), cache_root)   # train prepares it first
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: cannot write in the cache: {os.path.join(folder, 'clips', 'dog1.npz')}: Permission denied" \
        in proc.stderr


def test_cache_naming_a_file_is_a_sentence(root, tmp_path):
    path = tmp_path / "file"
    path.write_text("not a folder")
    with pytest.raises(CacheWriteError, match=rf"--cache {path}/ave/\S+: cannot create the cache folder"):
        prepare("ave", root, str(path), progress=False, image_size=S, num_frames=F)


def test_train_names_the_damaged_file_and_a_command_that_runs(root, cache_tiny):
    cache_root, folder = cache_tiny
    with open(os.path.join(folder, "audio.npy"), "r+b") as f:
        f.truncate(100)
    proc = subprocess.run([sys.executable, *_train_args(cache_root)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{os.path.join(folder, 'audio.npy')}: 100 bytes, prepare wrote" in proc.stderr
    command = next(line.strip() for line in proc.stderr.splitlines() if "refsnn.data.prepare" in line)
    assert command.startswith(f"python -m refsnn.data.prepare --data ave --root {root} --cache ")
    fixed = subprocess.run([sys.executable, *command.split()[1:]], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert fixed.returncode == 0 and "0 decoded now" in fixed.stdout, fixed.stderr
    assert len(load_dataset("ave", "train", cache=cache_root, image_size=TINY, num_frames=F)) == 3


def test_a_damaged_index_still_gives_the_recorded_root(root, cache):
    cache_root, folder = cache
    with open(os.path.join(folder, "index.json"), "r+b") as f:
        f.truncate(40)
    with pytest.raises(CacheDamaged, match=rf"index.json[\s\S]*--data ave --root {root} --cache {cache_root}"):
        load_dataset("ave", "train", cache=cache_root, image_size=S, num_frames=F)


def test_a_cremad_csv_that_is_not_utf8_names_file_and_line(tmp_path):
    root = str(tmp_path / "r")
    os.makedirs(os.path.join(root, "AudioWAV"))
    os.makedirs(os.path.join(root, "VideoFlash"))
    open(os.path.join(root, "train.csv"), "wb").write(b"clip,EMO\n1001_DFA_ANG_XX,ANG\n1002_DFA_\xff_XX,HAP\n")
    open(os.path.join(root, "test.csv"), "wb").write(b"1003_DFA_SAD_XX,SAD\n")
    with pytest.raises(ValueError, match=r"train.csv:3: not UTF-8 text \(byte 0xff at column 10\)"):
        prepare("cremad", root, str(tmp_path / "cache"), progress=False, image_size=S)
