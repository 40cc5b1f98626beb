"""A damaged or stale prepared cache is noticed, named with the command that repairs it, and
repaired by ``prepare`` (issue 15, cache integrity); list files that are not UTF-8."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import datafactory as fac
from refsnn.data import load_dataset
from refsnn.data.integrity import CacheDamaged
from refsnn.data.prepare import prepare

S = 16
SPLITS = {"train": [("Church bell", "bell1"), ("Dog", "dog1"), ("Truck", "truck1")],
          "val": [("Dog", "dog2")], "test": [("Truck", "truck2"), ("Church bell", "bell2")]}
OPTS = dict(image_size=S, num_frames=2)


@pytest.fixture(scope="module")
def ave(tmp_path_factory):
    """An AVE root and a prepared cache of it (copied by each test before it is damaged)."""
    root = fac.make_ave(tmp_path_factory.mktemp("ave"), SPLITS)
    cache = str(tmp_path_factory.mktemp("cache"))
    report = prepare("ave", root, cache, progress=False, **OPTS)
    return root, cache, report.cache_dir


def copy_cache(ave, tmp_path):
    root, cache, directory = ave
    mine = str(tmp_path / "cache")
    shutil.copytree(cache, mine)
    return root, mine, os.path.join(mine, os.path.relpath(directory, cache))


def load(root, cache, split="train"):
    return load_dataset("ave", split, root=root, cache=cache, **OPTS)


def truncate(path, keep):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:keep if keep >= 0 else len(data) // 2])


@pytest.mark.parametrize("name, damage, message", [
    ("audio.npy", lambda p: truncate(p, -1), "audio.npy: {} bytes, prepare wrote"),
    ("audio.npy", lambda p: truncate(p, 0), "audio.npy: 0 bytes, prepare wrote"),
    ("frames.npy", lambda p: truncate(p, -1), "frames.npy: {} bytes, prepare wrote"),
    ("index.json", lambda p: truncate(p, -1), "index.json: the cache's index is damaged"),
    ("params.json", lambda p: truncate(p, -1), "params.json: the cache's params.json is damaged"),
])
def test_a_damaged_cache_file_is_named_and_prepare_repairs_it(ave, tmp_path, name, damage, message):
    root, cache, directory = copy_cache(ave, tmp_path)
    before = load(root, cache)
    audio, frames = before.arrays(np.arange(len(before)))[:2]
    path = os.path.join(directory, name)
    damage(path)
    with pytest.raises(CacheDamaged) as e:
        load(root, cache)
    text = str(e.value)
    assert path in text and message.format(os.path.getsize(path)).split(": ", 1)[1] in text
    assert "repair it with" in text and "python -m refsnn.data.prepare --data ave" in text
    report = prepare("ave", root, cache, progress=False, **OPTS)
    assert report.decoded == 0                               # the clip files were intact
    after = load(root, cache)
    np.testing.assert_array_equal(after.arrays(np.arange(len(after)))[0], audio)
    np.testing.assert_array_equal(after.arrays(np.arange(len(after)))[1], frames)


def test_nan_in_cached_audio_is_named_and_the_clip_decoded_again(ave, tmp_path):
    root, cache, directory = copy_cache(ave, tmp_path)
    good = load(root, cache).arrays(np.arange(3))[0]
    stacked = np.load(os.path.join(directory, "audio.npy"), mmap_mode="r+")
    row = json.load(open(os.path.join(directory, "index.json")))["clip_ids"].index("dog1")
    stacked[row, 0, 3, 3] = np.nan                           # same size: only the content is wrong
    stacked.flush()
    del stacked
    clip = os.path.join(directory, "clips", "dog1.npz")
    with np.load(clip) as z:
        arrays = dict(z)
    arrays["audio"][0, 0, 0] = np.nan                        # and its clip file too
    np.savez(clip, **arrays)
    with pytest.raises(CacheDamaged, match=rf"audio.npy: row {row} \(clip dog1\) holds NaN or inf"):
        load(root, cache)
    report = prepare("ave", root, cache, progress=False, **OPTS)
    assert report.decoded == 1                               # dog1 decoded again from its video
    np.testing.assert_array_equal(load(root, cache).arrays(np.arange(3))[0], good)


def test_a_truncated_clip_file_is_decoded_again(ave, tmp_path):
    root, cache, directory = copy_cache(ave, tmp_path)
    truncate(os.path.join(directory, "clips", "bell1.npz"), -1)
    os.remove(os.path.join(directory, "audio.npy"))
    report = prepare("ave", root, cache, progress=False, **OPTS)
    assert report.decoded == 1 and len(load(root, cache)) == 3


def test_a_clip_fixed_after_it_was_skipped_is_noticed_and_picked_up(tmp_path):
    root = fac.make_ave(tmp_path / "ave", SPLITS)
    video = os.path.join(root, "AVE", "truck1.mp4")
    os.replace(video, video + ".saved")
    fac.write_garbage(video)
    cache = str(tmp_path / "cache")
    report = prepare("ave", root, cache, progress=False, **OPTS)
    assert [c for c, _ in report.skipped] == ["truck1"] and len(load(root, cache)) == 2
    os.replace(video + ".saved", video)                     # fixed at the source
    with pytest.raises(CacheDamaged, match=r"clip truck1 was skipped by prepare .* but its source .*truck1.mp4 "
                                           r"has changed since; the cache is stale(.|\n)*python -m refsnn.data.prepare"):
        load(root, cache)
    report = prepare("ave", root, cache, progress=False, **OPTS)
    assert report.skipped == [] and report.decoded == 1
    assert len(load(root, cache)) == 3


def test_train_repairs_a_damaged_cache_when_it_has_the_root(ave, tmp_path, capsys):
    from refsnn.evaluation import load_splits
    root, cache, directory = copy_cache(ave, tmp_path)
    truncate(os.path.join(directory, "audio.npy"), -1)
    splits = load_splits("ave", image_size=S, root=root, cache=cache, progress=False, num_frames=2)
    assert len(splits["train"]) == 3
    assert "damaged or stale" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_complete_cache_is_used_and_prepared_again_without_error(ave, tmp_path):
    root, cache, directory = copy_cache(ave, tmp_path)
    for dirpath, _, _ in os.walk(cache):
        os.chmod(dirpath, 0o555)
    try:
        assert len(load(root, cache)) == 3
        prepare("ave", root, cache, progress=False, **OPTS)
    finally:
        for dirpath, _, _ in os.walk(cache):
            os.chmod(dirpath, 0o755)


def test_a_list_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    root = fac.make_ave(tmp_path / "ave", SPLITS, write_videos=False)
    path = os.path.join(root, "Annotations.txt")
    lines = open(path, "rb").read().splitlines()
    lines[2] = "Dog&caf\u00e9&good&0&10".encode("latin-1")
    open(path, "wb").write(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"Annotations.txt:3: not UTF-8 text \(byte 0xe9 at column 8\); "
                                         r"save the file as UTF-8"):
        prepare("ave", root, str(tmp_path / "cache"), progress=False, **OPTS)


def test_a_decoded_clip_whose_source_was_replaced_is_stale_and_decoded_again(tmp_path):
    root = fac.make_ave(tmp_path / "ave", SPLITS)
    cache = str(tmp_path / "cache")
    prepare("ave", root, cache, progress=False, **OPTS)
    moved = os.path.join(root, "AVE", "bell1.mp4")
    os.replace(moved, moved + ".away")                      # gone: no change, the cache keeps the clip
    assert load(root, cache).clip_ids == ["bell1", "dog1", "truck1"]
    os.replace(moved + ".away", moved)
    video = os.path.join(root, "AVE", "truck2.mp4")
    fac.write_mp4(video, colour="blue", tone=440.0)         # replaced: same id, other content
    with pytest.raises(CacheDamaged, match=rf"clip truck2: its source {video} was replaced since prepare decoded "
                                           r"it; the cache is stale(.|\n)*python -m refsnn.data.prepare"):
        load(root, cache, "test")
    report = prepare("ave", root, cache, progress=False, **OPTS)
    assert (report.decoded, report.reused) == (1, 5)
    frames = load(root, cache, "test")[0].frames
    assert frames[:, 2].mean() > 0.6 and frames[:, 1].mean() < 0.2   # the blue video now
    again = prepare("ave", root, cache, progress=False, **OPTS)
    assert (again.decoded, again.reused) == (0, 6)
