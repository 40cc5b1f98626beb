"""AVE, CREMA-D and UrbanSound8K-AV end to end: tiny data sets written with real encoders in each
layout, through ``prepare`` (library and command line) and the batch iterator; every bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import datafactory as fac
from refsnn.data import BatchIterator, load_dataset
from refsnn.data.audio import log_spectrogram
from refsnn.data.layout import LayoutError
from refsnn.data.prepare import PrepareError, _parser, prepare
from refsnn.data.video import decode_audio_track

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
S = 16          # image size of the tests: small and fast
AVE_SPLITS = {
    "train": [("Church bell", "bell1"), ("Dog", "dog1"), ("Truck", "truck1"), ("Dog", "dog2")],
    "val": [("Church bell", "bell2"), ("Dog", "dog1")],          # dog1 repeated: dropped, reported
    "test": [("Truck", "truck2"), ("Church bell", "bell3")],
}


@pytest.fixture(scope="module")
def ave_root(tmp_path_factory):
    return fac.make_ave(tmp_path_factory.mktemp("ave"), AVE_SPLITS)


@pytest.fixture(scope="module")
def ave_cache(ave_root, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("ave_cache"))
    report = prepare("ave", ave_root, cache, image_size=S, num_frames=3, progress=False)
    return cache, report


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


# -- AVE -----------------------------------------------------------------------------------------
def test_ave_end_to_end(ave_root, ave_cache):
    cache, report = ave_cache
    assert (report.listed, report.decoded, report.reused, report.skipped) == (7, 7, 0, [])
    assert report.notes == [("dog1", "repeated video id: row valSet.txt:2 dropped, kept trainSet.txt:2")]
    assert report.split_counts == {"train": 4, "val": 1, "test": 2}
    assert "dog1" in str(report)
    ds = {sp: load_dataset("ave", sp, cache=cache, image_size=S, num_frames=3) for sp in ("train", "val", "test")}
    assert ds["train"].class_names == ["Church bell", "Dog", "Truck"]
    assert ds["train"].clip_ids == ["bell1", "dog1", "truck1", "dog2"]
    assert list(ds["train"].labels) == [0, 1, 2, 1]
    assert ds["val"].clip_ids == ["bell2"] and ds["test"].clip_ids == ["truck2", "bell3"]
    item = ds["test"][0]
    assert item.audio.shape == (1, S, S) and item.audio.dtype == np.float32
    assert item.frames.shape == (3, 3, S, S) and item.frames.dtype == np.float32
    assert 0.0 <= item.frames.min() and item.frames.max() <= 1.0
    assert (item.label, item.clip_id) == (2, "truck2")
    # content: a green video; and the cached spectrogram is exactly the audio path's output
    assert item.frames[:, 1].mean() > 0.35 and item.frames[:, 0].mean() < 0.1
    wave, rate = decode_audio_track(os.path.join(ave_root, "AVE", "truck2.mp4"))
    np.testing.assert_array_equal(item.audio, log_spectrogram(wave, rate, S))
    # the tones (440 / 2000 / 5000 Hz) peak on rising spectrogram rows
    peak_rows = [int(ds["train"][i].audio[0].mean(axis=1).argmax()) for i in range(3)]
    assert peak_rows[0] < peak_rows[1] < peak_rows[2]
    batches = list(BatchIterator(ds["train"], 3, shuffle=False))
    assert [b.audio.shape for b in batches] == [(3, 1, S, S), (1, 1, S, S)]
    assert batches[0].frames.shape == (3, 3, 3, S, S) and list(batches[0].labels) == [0, 1, 2]


def test_ave_prepare_again_reuses_everything(ave_root, ave_cache):
    cache, _ = ave_cache
    index_path = next(os.path.join(d, "index.json") for d, _, f in os.walk(cache) if "index.json" in f)
    before = os.stat(index_path).st_mtime_ns
    report = prepare("ave", ave_root, cache, image_size=S, num_frames=3, progress=False)
    assert (report.decoded, report.reused, report.skipped) == (0, 7, [])
    assert os.stat(index_path).st_mtime_ns == before          # nothing changed, nothing rewritten


def test_ave_cache_with_other_parameters_is_an_error(ave_root, ave_cache, tmp_path):
    cache, _ = ave_cache
    with pytest.raises(ValueError, match=r"other parameters[\s\S]*image_size: cache has 16, asked 24"):
        load_dataset("ave", "train", cache=cache, image_size=24, num_frames=3)
    with pytest.raises(ValueError, match="num_frames: cache has 3, asked 10"):
        load_dataset("ave", "train", cache=cache, image_size=S)
    # a params.json that does not match its folder's key (edited, or an older format)
    copy = _copy(cache, tmp_path / "c")
    params_path = next(os.path.join(d, "params.json") for d, _, f in os.walk(copy) if "params.json" in f)
    params = json.load(open(params_path))
    params["hop"] = 512
    json.dump(params, open(params_path, "w"))
    with pytest.raises(ValueError, match=r"made with other parameters \(hop: cache has 512, asked 353\)"):
        load_dataset("ave", "train", cache=copy, image_size=S, num_frames=3)
    with pytest.raises(ValueError, match="made with other parameters"):
        prepare("ave", ave_root, copy, image_size=S, num_frames=3, progress=False)


def test_missing_cache_names_the_prepare_command_and_layout(tmp_path):
    with pytest.raises(ValueError) as err:
        load_dataset("ave", "train", root="/data/AVE_Dataset", cache=str(tmp_path), image_size=32)
    text = str(err.value)
    assert "python -m refsnn.data.prepare --data ave --root /data/AVE_Dataset" in text
    assert f"--cache {tmp_path}" in text and "--image-size 32" in text
    assert "Annotations.txt" in text and "AVE/<VideoID>.mp4" in text
    with pytest.raises(ValueError) as err:
        load_dataset("ave", "train", root="/d", cache=str(tmp_path), image_size=32, num_frames=3,
                     silence_threshold=0.001)
    command = next(line.strip() for line in str(err.value).splitlines() if "refsnn.data.prepare" in line)
    assert "--num-frames 3" in command and "--silence-threshold 0.001" in command
    args = _parser().parse_args(command.split()[3:])          # the printed command is valid
    assert (args.data, args.root, args.image_size, args.num_frames, args.silence_threshold) == \
        ("ave", "/d", 32, 3, 0.001)


def test_interrupted_cache_is_reported_incomplete(ave_cache, tmp_path):
    copy = _copy(ave_cache[0], tmp_path / "c")
    os.remove(next(os.path.join(d, "index.json") for d, _, f in os.walk(copy) if "index.json" in f))
    with pytest.raises(ValueError, match="incomplete"):
        load_dataset("ave", "train", cache=copy, image_size=S, num_frames=3)


@pytest.mark.parametrize("remove, what", [
    ("", "AVE root not found"), ("AVE", "AVE video folder not found"),
    ("Annotations.txt", "AVE Annotations.txt not found"), ("valSet.txt", "AVE split file valSet.txt not found"),
])
def test_ave_missing_paths(ave_root, tmp_path, remove, what):
    root = _copy(ave_root, tmp_path / "r")
    target = os.path.join(root, remove) if remove else root
    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    with pytest.raises(LayoutError) as err:
        prepare("ave", root, str(tmp_path / "cache"), image_size=S, progress=False)
    assert what in str(err.value) and target in str(err.value)
    assert "expected layout" in str(err.value) and "trainSet.txt" in str(err.value)


def _rewrite(path, old, new):
    text = open(path).read()
    assert old in text
    open(path, "w").write(text.replace(old, new, 1))


@pytest.mark.parametrize("dataset, file, old, new, pattern", [
    ("ave", "Annotations.txt", "Dog&dog2&good&0&10", "Dog&dog2&good&0",
     r"Annotations.txt:\d+: malformed row .*expected 5 fields"),
    ("ave", "Annotations.txt", "Dog&dog2&good&0&10", "Dog&dog2&good&zero&10", r"Annotations.txt:\d+: .*must be numbers"),
    ("ave", "trainSet.txt", "Truck&truck1&good&0&10", "Truck&truck1", r"trainSet.txt:3: malformed row"),
    ("ave", "testSet.txt", "Truck&truck2", "Tractor&truck2", r"testSet.txt:1: unknown class name 'Tractor'"),
    ("cremad", "test.csv", "1091_IEO_FEA_HI,FEA", "1091_IEO_FEA_HI,FEAR", r"test.csv:1: unknown class name 'FEAR'"),
    ("cremad", "test.csv", "1091_IEO_FEA_HI,FEA", "1091_IEO_FEA_HI,DIS", r"test.csv:1: label DIS disagrees"),
    ("cremad", "train.csv", "1001_DFA_ANG_XX,ANG", "1001_DFA_ANG_XX ANG", r"train.csv:2: malformed row"),
    ("cremad", "train.csv", "1002_DFA_HAP_XX,HAP", "DFA_HAP_XX,HAP", r"train.csv:3: malformed clip name"),
])
def test_bad_rows_name_file_and_line(request, tmp_path, dataset, file, old, new, pattern):
    root = _copy(request.getfixturevalue(f"{dataset}_root"), tmp_path / "r")
    _rewrite(os.path.join(root, file), old, new)
    with pytest.raises(ValueError, match=pattern):
        prepare(dataset, root, str(tmp_path / "cache"), image_size=S, progress=False)


def test_ave_empty_split_file(ave_root, tmp_path):
    root = _copy(ave_root, tmp_path / "r")
    open(os.path.join(root, "testSet.txt"), "w").close()
    with pytest.raises(ValueError, match=r"testSet.txt: empty split file .*test split would be empty"):
        prepare("ave", root, str(tmp_path / "cache"), image_size=S, progress=False)


@pytest.fixture(scope="module")
def ave_bad_root(tmp_path_factory):
    """Good clips plus one of each broken kind; the test split holds only broken clips."""
    splits = {"train": [("Church bell", "ok1"), ("Dog", "ok2"), ("Dog", "corrupt"), ("Truck", "trunc"),
                        ("Truck", "trunc_fs"), ("Dog", "noaudio"), ("Church bell", "silent")],
              "val": [("Dog", "short"), ("Truck", "ok3")],
              "test": [("Truck", "missing"), ("Dog", "garbage")]}
    root = str(tmp_path_factory.mktemp("ave_bad"))
    videos = os.path.join(root, "AVE")
    fac.write_mp4(os.path.join(videos, "corrupt.mp4"))
    fac.truncate(os.path.join(videos, "corrupt.mp4"), 0.4)                     # moov atom lost
    fac.write_mp4(os.path.join(videos, "trunc.mp4"), seconds=4)
    fac.truncate(os.path.join(videos, "trunc.mp4"), 0.6)
    fac.write_mp4(os.path.join(videos, "trunc_fs.mp4"), seconds=4, faststart=True)
    fac.truncate(os.path.join(videos, "trunc_fs.mp4"), 0.5)                   # index kept, data cut
    fac.write_mp4(os.path.join(videos, "noaudio.mp4"), audio="none")
    fac.write_mp4(os.path.join(videos, "silent.mp4"), audio="silent")
    fac.write_mp4(os.path.join(videos, "short.mp4"), seconds=0.1)
    fac.write_garbage(os.path.join(videos, "garbage.mp4"))
    fac.make_ave(root, {k: [r for r in v if r[1] != "missing"] for k, v in splits.items()})
    fac.make_ave(root, splits, write_videos=False)          # lists "missing" without its file
    return root


def test_ave_bad_clips_are_skipped_and_reported(ave_bad_root, tmp_path):
    report = prepare("ave", ave_bad_root, str(tmp_path), image_size=S, num_frames=2, progress=False)
    reasons = dict(report.skipped)
    assert sorted(reasons) == ["corrupt", "garbage", "missing", "noaudio", "short", "silent", "trunc", "trunc_fs"]
    assert reasons["corrupt"].startswith("corrupt video") and "moov atom not found" in reasons["corrupt"]
    assert reasons["trunc"].startswith("corrupt video")
    assert reasons["trunc_fs"].startswith("truncated")
    assert reasons["noaudio"] == "video has no audio track"
    assert reasons["silent"].startswith("silent audio")
    assert reasons["short"].startswith("very short video: no frame at 1 fps")
    assert reasons["missing"].startswith("missing file") and "missing.mp4" in reasons["missing"]
    assert reasons["garbage"].startswith("corrupt video")
    text = str(report)
    for clip, reason in report.skipped:
        assert f"  {clip}: {reason}" in text
    train = load_dataset("ave", "train", cache=str(tmp_path), image_size=S, num_frames=2)
    assert train.clip_ids == ["ok1", "ok2"]
    with pytest.raises(ValueError, match=r"test split is empty .*2 of its clips were skipped"):
        load_dataset("ave", "test", cache=str(tmp_path), image_size=S, num_frames=2)
    saved = json.load(open(os.path.join(report.cache_dir, "report.json")))
    assert [tuple(s) for s in saved["skipped"]] == report.skipped


def test_ave_strict_fails_on_the_first_bad_clip(ave_bad_root, tmp_path):
    with pytest.raises(PrepareError, match=r"clip corrupt \(train\): corrupt video .*--strict"):
        prepare("ave", ave_bad_root, str(tmp_path), image_size=S, num_frames=2, strict=True,
                progress=False, workers=1)


def test_command_line(ave_bad_root, tmp_path):
    cmd = [sys.executable, "-m", "refsnn.data.prepare", "--data", "ave", "--root", ave_bad_root,
           "--cache", str(tmp_path), "--image-size", str(S), "--num-frames", "2", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "skipped clips (8):" in proc.stdout and "  noaudio: video has no audio track" in proc.stdout
    strict = subprocess.run(cmd + ["--strict"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1 and "error:" in strict.stderr and "--strict" in strict.stderr
    missing = subprocess.run(cmd[:6] + [str(tmp_path / "nowhere")] + cmd[7:], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 1 and "AVE root not found" in missing.stderr


def test_resume_after_killing_prepare(tmp_path):
    """Kill a prepare subprocess mid-way: no half file is left, and a second run decodes only the rest
    and gives the same cache as an uninterrupted run."""
    n = 24
    root = fac.make_ave(tmp_path / "root", {
        "train": [("Dog", f"v{i:02d}") for i in range(0, n - 4)],
        "val": [("Truck", f"v{i:02d}") for i in range(n - 4, n - 2)],
        "test": [("Church bell", f"v{i:02d}") for i in range(n - 2, n)]})
    cache = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "refsnn.data.prepare", "--data", "ave", "--root", root, "--cache", cache,
           "--image-size", str(S), "--num-frames", "2", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finished_clips():
        return [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if f.endswith(".npz")]

    deadline = time.time() + 120
    while len(finished_clips()) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = finished_clips()
    assert 3 <= len(done) < n, f"the process was not killed mid-way ({len(done)} of {n} clips done)"
    assert not any(f == "index.json" for _, _, fs in os.walk(cache) for f in fs)
    for path in done:                                   # every finished file is whole
        with np.load(path) as z:
            assert z["audio"].shape == (1, S, S) and z["frames"].shape == (2, 3, S, S)
    with pytest.raises(ValueError, match="incomplete"):
        load_dataset("ave", "train", cache=cache, image_size=S, num_frames=2)
    report = prepare("ave", root, cache, image_size=S, num_frames=2, progress=False)
    assert report.reused == len(done) and report.decoded == n - len(done) and not report.skipped
    assert not [f for _, _, fs in os.walk(cache) for f in fs if f.endswith(".tmp")]
    fresh = str(tmp_path / "fresh")
    prepare("ave", root, fresh, image_size=S, num_frames=2, progress=False)
    for split in ("train", "val", "test"):
        a = load_dataset("ave", split, cache=cache, image_size=S, num_frames=2)
        b = load_dataset("ave", split, cache=fresh, image_size=S, num_frames=2)
        assert a.clip_ids == b.clip_ids
        for x, y in zip(a.arrays(range(len(a))), b.arrays(range(len(b)))):
            np.testing.assert_array_equal(x, y)


def test_stale_temporary_files_of_dead_writers_are_removed(ave_root, tmp_path):
    cache = str(tmp_path)
    report = prepare("ave", ave_root, cache, image_size=S, num_frames=3, progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(report.cache_dir, "clips", f".bell1.npz.{dead.pid}.tmp")
    mine = os.path.join(report.cache_dir, "clips", f".dog1.npz.{os.getpid()}.tmp")
    open(stale, "wb").write(b"half a file")
    open(mine, "wb").write(b"in progress")
    prepare("ave", ave_root, cache, image_size=S, num_frames=3, progress=False)
    assert not os.path.exists(stale) and os.path.exists(mine)


# -- CREMA-D -------------------------------------------------------------------------------------
CREMA_TRAIN = [(f"10{a:02d}_DFA_{e}_XX", e) for a, e in enumerate(["ANG", "HAP", "NEU", "SAD", "FEA", "DIS",
                                                                    "ANG", "HAP", "NEU", "SAD"], start=1)]
CREMA_TEST = [("1091_IEO_FEA_HI", "FEA"), ("1091_IEO_DIS_LO", "DIS")]


@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory):
    return fac.make_cremad(tmp_path_factory.mktemp("cremad"), CREMA_TRAIN, CREMA_TEST,
                           frames_dirs={CREMA_TRAIN[0][0], CREMA_TEST[1][0]})


def test_cremad_end_to_end(cremad_root, tmp_path):
    report = prepare("cremad", cremad_root, str(tmp_path), image_size=S, progress=False)
    assert (report.decoded, report.skipped) == (12, [])
    train = load_dataset("cremad", "train", cache=str(tmp_path), image_size=S, seed=3)
    val = load_dataset("cremad", "val", cache=str(tmp_path), image_size=S, seed=3)
    test = load_dataset("cremad", "test", cache=str(tmp_path), image_size=S, seed=3)
    assert train.class_names == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert (len(train), len(val), len(test)) == (9, 1, 2)             # a seeded 10% of train is val
    assert sorted(train.clip_ids + val.clip_ids) == sorted(c for c, _ in CREMA_TRAIN)
    assert test.clip_ids == [c for c, _ in CREMA_TEST] and list(test.labels) == [3, 4]
    names = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert all(train.class_names[l] == c.split("_")[2] for l, c in zip(train.labels, train.clip_ids))
    again = load_dataset("cremad", "val", cache=str(tmp_path), image_size=S, seed=3)
    assert again.clip_ids == val.clip_ids
    other = {tuple(load_dataset("cremad", "val", cache=str(tmp_path), image_size=S, seed=s).clip_ids)
             for s in range(6)}
    assert len(other) > 1                                              # the hold-out follows the seed
    a, f, _ = test.arrays([0, 1])
    assert f.shape == (2, 4, 3, S, S)                                  # CREMA-D default: 4 frames
    assert f[0, :, 2].mean() > 0.6 and f[0, :, 1].mean() < 0.2        # the blue flv
    assert f[1, :, 1].mean() > 0.6 and f[1, :, 0].mean() < 0.2        # the green frame folder
    assert names.index("FEA") == test.labels[0]


def test_cremad_bad_files(cremad_root, tmp_path):
    root = _copy(cremad_root, tmp_path / "r")
    clips = [c for c, _ in CREMA_TRAIN]
    fac.truncate(os.path.join(root, "AudioWAV", f"{clips[1]}.wav"), 0.6)           # data cut
    fac.write_garbage(os.path.join(root, "AudioWAV", f"{clips[2]}.wav"))
    os.remove(os.path.join(root, "AudioWAV", f"{clips[3]}.wav"))
    fac.write_wav(os.path.join(root, "AudioWAV", f"{clips[4]}.wav"), silent=True)
    fac.write_wav(os.path.join(root, "AudioWAV", f"{clips[5]}.wav"), seconds=0.05)
    fac.truncate(os.path.join(root, "VideoFlash", clips[0], "frame_001.jpg"), 0.3)   # jpg in a frame folder
    fac.write_garbage(os.path.join(root, "VideoFlash", f"{clips[6]}.flv"))
    report = prepare("cremad", root, str(tmp_path / "cache"), image_size=S, progress=False)
    reasons = dict(report.skipped)
    assert sorted(reasons) == sorted(clips[:7])
    assert reasons[clips[0]].startswith("unreadable image frame_001.jpg")
    assert reasons[clips[1]].startswith("truncated wav: the data chunk holds")
    assert reasons[clips[2]].startswith("unreadable audio file")
    assert reasons[clips[3]].startswith("missing file")
    assert reasons[clips[4]].startswith("silent audio")
    assert reasons[clips[5]].startswith("very short audio: 0.050 s")
    assert reasons[clips[6]].startswith("corrupt video")
    with pytest.raises(PrepareError):
        prepare("cremad", root, str(tmp_path / "strict"), image_size=S, progress=False, strict=True)


def test_cremad_missing_split_file(cremad_root, tmp_path):
    root = _copy(cremad_root, tmp_path / "r")
    os.remove(os.path.join(root, "test.csv"))
    with pytest.raises(LayoutError, match=r"CREMA-D split file test.csv not found: .*test.csv"):
        prepare("cremad", root, str(tmp_path / "cache"), image_size=S, progress=False)


# -- UrbanSound8K-AV ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def us8k_root(tmp_path_factory):
    return fac.make_us8k(tmp_path_factory.mktemp("us8k"), {
        "dog_bark": [f"100{i}-3-0-0" for i in range(5)], "car_horn": [f"200{i}-1-0-0" for i in range(4)]})


def test_us8k_end_to_end(us8k_root, tmp_path):
    report = prepare("urbansound8k-av", us8k_root, str(tmp_path), image_size=S, progress=False)
    assert (report.decoded, report.skipped) == (9, [])
    kw = dict(cache=str(tmp_path), image_size=S, seed=0)
    train, val, test = (load_dataset("urbansound8k-av", sp, **kw) for sp in ("train", "val", "test"))
    assert train.class_names == ["car_horn", "dog_bark"] and train.num_frames == 1
    # first (7 n) // 10 sorted stems of each class are train: car_horn 2 of 4, dog_bark 3 of 5
    assert sorted(train.clip_ids + val.clip_ids) == ["car_horn/2000-1-0-0", "car_horn/2001-1-0-0",
                                                     "dog_bark/1000-3-0-0", "dog_bark/1001-3-0-0",
                                                     "dog_bark/1002-3-0-0"]
    assert len(val) == 1 and test.clip_ids == ["car_horn/2002-1-0-0", "car_horn/2003-1-0-0",
                                               "dog_bark/1003-3-0-0", "dog_bark/1004-3-0-0"]
    assert list(test.labels) == [0, 0, 1, 1]
    _, frames, _ = test.arrays([0, 3])
    assert frames.shape == (2, 1, 3, S, S)
    assert frames[0, 0, 0].mean() > 0.7 and frames[1, 0, 2].mean() > 0.7     # red horn, blue dog images


def test_us8k_bad_inputs(us8k_root, tmp_path):
    root = _copy(us8k_root, tmp_path / "r")
    vision = os.path.join(root, "Dataset_v3_vision")
    fac.truncate(os.path.join(vision, "dog_bark", "1000-3-0-0.jpg"), 0.3)
    os.remove(os.path.join(vision, "dog_bark", "1001-3-0-0.jpg"))
    fac.write_jpg(os.path.join(vision, "dog_bark", "1999-3-0-0.jpg"))
    fac.write_wav(os.path.join(root, "Dataset_v3_sound", "car_horn", "2000-1-0-0.wav"), silent=True)
    report = prepare("urbansound8k-av", root, str(tmp_path / "cache"), image_size=S, progress=False)
    reasons = dict(report.skipped)
    assert sorted(reasons) == ["car_horn/2000-1-0-0", "dog_bark/1000-3-0-0", "dog_bark/1001-3-0-0"]
    assert reasons["dog_bark/1000-3-0-0"].startswith("unreadable image")
    assert reasons["dog_bark/1001-3-0-0"].startswith("missing file")
    assert reasons["car_horn/2000-1-0-0"].startswith("silent audio")
    assert report.notes == [("dog_bark/1999-3-0-0", "image without a wav: ignored")]
    os.makedirs(os.path.join(vision, "siren"))
    with pytest.raises(ValueError, match=r"unknown class names: .*only in vision \['siren'\]"):
        prepare("urbansound8k-av", root, str(tmp_path / "cache"), image_size=S, progress=False)
    shutil.rmtree(vision)
    with pytest.raises(LayoutError, match="UrbanSound8K-AV vision folder not found"):
        prepare("urbansound8k-av", root, str(tmp_path / "cache"), image_size=S, progress=False)


def test_prepare_argument_errors(us8k_root, tmp_path):
    with pytest.raises(ValueError, match="nothing to prepare"):
        prepare("synthetic", us8k_root, str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['fps'\]"):
        prepare("urbansound8k-av", us8k_root, str(tmp_path), fps=1.0)
    with pytest.raises(ValueError, match="name: expected one of"):
        prepare("kinetics", us8k_root, str(tmp_path))
    with pytest.raises(ValueError, match="image_size: expected an integer >= 8"):
        prepare("ave", us8k_root, str(tmp_path), image_size=4)
