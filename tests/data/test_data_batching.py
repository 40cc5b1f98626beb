"""BatchIterator (seeded order, resume, drop_last, prefetch thread) and the augmentations."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn.data import Batch, BatchIterator, Dataset, epoch_order, load_dataset
from refsnn.data import augment as aug
from refsnn.data.resize import resize2d, resize_weights


def _toy(n=10, frames=2, size=8) -> Dataset:
    """Clip i: audio filled with i, frames filled with i (uint8), label i % 3."""
    audio = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, size, size)).copy()
    fr = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None, None], (n, frames, 3, size, size)).copy()
    return Dataset("toy", "train", ["a", "b", "c"], audio, fr, np.arange(n) % 3, [f"c{i}" for i in range(n)])


def _ids(batches):
    return [list(b.clip_ids) for b in batches]


@settings(deadline=None, max_examples=30)
@given(n=st.integers(1, 23), bs=st.integers(1, 9), seed=st.integers(0, 2 ** 32 - 1), epoch=st.integers(0, 50),
       drop_last=st.booleans(), prefetch=st.integers(0, 3))
def test_epoch_covers_each_clip_once_in_a_seeded_order(n, bs, seed, epoch, drop_last, prefetch):
    ds = _toy(n)
    if drop_last and bs > n:
        with pytest.raises(ValueError, match="larger than the data set"):
            BatchIterator(ds, bs, drop_last=True)
        return
    it = BatchIterator(ds, bs, seed=seed, epoch=epoch, drop_last=drop_last, prefetch=prefetch)
    batches = list(it)
    assert len(batches) == len(it) == (n // bs if drop_last else -(-n // bs))
    order = epoch_order(n, seed, epoch)
    seen = np.concatenate([b.audio[:, 0, 0, 0] for b in batches]).astype(int) if batches else np.array([], int)
    np.testing.assert_array_equal(seen, order[:len(seen)])
    assert len(seen) == (n // bs * bs if drop_last else n)
    for b in batches:
        assert b.audio.dtype == np.float32 and b.frames.dtype == np.float32 and b.labels.dtype == np.int64
        np.testing.assert_array_equal(b.labels, b.audio[:, 0, 0, 0].astype(int) % 3)
        np.testing.assert_allclose(b.frames[:, 0, 0, 0, 0] * 255, b.audio[:, 0, 0, 0], rtol=1e-6)


def test_order_depends_on_seed_and_epoch_only():
    ds = _toy(20)
    first = _ids(BatchIterator(ds, 4, seed=1, epoch=2))
    assert first == _ids(BatchIterator(ds, 4, seed=1, epoch=2, prefetch=0))
    assert first != _ids(BatchIterator(ds, 4, seed=1, epoch=3))
    assert first != _ids(BatchIterator(ds, 4, seed=2, epoch=2))
    assert _ids(BatchIterator(ds, 4, shuffle=False)) == [[f"c{i}" for i in range(j, j + 4)] for j in range(0, 20, 4)]


def test_resume_mid_epoch_is_bit_identical_with_augmentation():
    ds = load_dataset("synthetic", "val", image_size=16, n_val=24, duration=0.5)
    transform = aug.Compose([aug.RandomResizedCrop(), aug.HorizontalFlip(), aug.SpecAugment(), aug.Mixup(0.4)])
    full = list(BatchIterator(ds, 5, seed=7, epoch=3, transform=transform))
    resumed = BatchIterator(ds, 5, seed=7, epoch=3, start_batch=2, transform=transform)
    assert len(resumed) == 3 and resumed.num_batches == 5
    rest = list(resumed)
    assert [b.index for b in rest] == [2, 3, 4]
    for a, b in zip(full[2:], rest):
        for field in ("audio", "frames", "labels", "labels_b"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert a.lam == b.lam and a.clip_ids == b.clip_ids
    assert list(BatchIterator(ds, 5, start_batch=5)) == []
    with pytest.raises(ValueError, match="start_batch: expected at most 5"):
        BatchIterator(ds, 5, start_batch=6)


def test_argument_errors():
    ds = _toy(4)
    with pytest.raises(ValueError, match="batch_size: 5 is larger than the data set"):
        BatchIterator(ds, 5, drop_last=True)
    assert len(BatchIterator(ds, 5)) == 1
    for kwargs, pattern in ((dict(batch_size=0), "batch_size"), (dict(batch_size=2, seed=-1), "seed"),
                            (dict(batch_size=2, prefetch=-1), "prefetch"),
                            (dict(batch_size=2, transform=3), "transform")):
        with pytest.raises(ValueError, match=pattern):
            BatchIterator(ds, **kwargs)
    with pytest.raises(ValueError, match="empty data set"):
        BatchIterator(ds.subset([]), 1)
    with pytest.raises(ValueError, match="indices: expected values in"):
        ds.arrays([4])


class _Boom(RuntimeError):
    pass


def test_exception_in_the_prefetch_thread_is_raised_in_the_consumer():
    def transform(batch, rng):
        if batch.index == 2:
            raise _Boom("bad batch 2")
        return batch

    it = BatchIterator(_toy(12), 3, transform=transform)
    assert next(it).index == 0 and next(it).index == 1
    with pytest.raises(_Boom, match="bad batch 2"):
        next(it)
    assert not it._thread.is_alive()
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(ValueError, match="expected it to return a Batch"):
        list(BatchIterator(_toy(4), 2, transform=lambda b, rng: None))


def test_thread_stops_on_close_and_on_garbage_collection():
    it = BatchIterator(_toy(40), 2, prefetch=2)
    next(it)
    thread = it._thread
    assert thread.is_alive()
    it.close()
    assert not thread.is_alive()
    with pytest.raises(StopIteration):
        next(it)

    it = BatchIterator(_toy(40), 2, prefetch=1)
    next(it)
    thread = it._thread
    del it
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()

    with BatchIterator(_toy(40), 2) as it:
        next(it)
        thread = it._thread
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "refsnn-batch-prefetch"]


def test_dataset_subset_and_memmap_like_access():
    ds = _toy(10)
    sub = ds.subset([7, 2, 9], split="val")
    assert sub.clip_ids == ["c7", "c2", "c9"] and list(sub.labels) == [1, 2, 0] and sub.split == "val"
    a, f, y = sub.arrays([2, 0])
    assert list(a[:, 0, 0, 0]) == [9, 7] and f.max() == pytest.approx(9 / 255)
    with pytest.raises(IndexError):
        sub[3]
    with pytest.raises(ValueError, match="index: expected an integer"):
        sub[1.0]


# -- augmentations --------------------------------------------------------------------------------
def _rng(seed=0):
    return np.random.Generator(np.random.PCG64(seed))


def _batch(b=4, f=2, size=12, seed=0) -> Batch:
    r = _rng(seed)
    return Batch(r.standard_normal((b, 1, size, size)).astype(np.float32),
                 r.random((b, f, 3, size, size)).astype(np.float32), np.arange(b) % 3,
                 tuple(f"c{i}" for i in range(b)))


def test_transforms_are_deterministic_given_the_generator_and_do_not_modify_inputs():
    batch = _batch()
    saved = (batch.audio.copy(), batch.frames.copy())
    t = aug.Compose([aug.RandomResizedCrop(), aug.HorizontalFlip(), aug.SpecAugment(), aug.Mixup(0.3)])
    one, two, other = t(batch, _rng(1)), t(batch, _rng(1)), t(batch, _rng(2))
    np.testing.assert_array_equal(one.frames, two.frames)
    np.testing.assert_array_equal(one.audio, two.audio)
    assert one.lam == two.lam and not np.array_equal(one.frames, other.frames)
    np.testing.assert_array_equal(batch.audio, saved[0])
    np.testing.assert_array_equal(batch.frames, saved[1])
    assert one.frames.dtype == np.float32 and one.frames.shape == batch.frames.shape
    with pytest.raises(ValueError, match="rng: expected a numpy.random.Generator"):
        aug.horizontal_flip(batch.frames, 0)


def test_full_crop_is_the_identity_and_crops_stay_in_range():
    frames = _batch().frames
    out = aug.random_resized_crop(frames, _rng(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(out, frames, atol=1e-6)
    out = aug.random_resized_crop(frames, _rng(), scale=(0.1, 0.3))
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6 and not np.allclose(out, frames)
    # one box per clip: frames of a clip that were equal stay equal
    same = np.repeat(frames[:, :1], 3, axis=1)
    out = aug.random_resized_crop(same, _rng(3))
    np.testing.assert_array_equal(out[:, 0], out[:, 2])
    with pytest.raises(ValueError, match="scale"):
        aug.RandomResizedCrop(scale=(0.8, 0.2))


def test_flip():
    frames = _batch().frames
    np.testing.assert_array_equal(aug.horizontal_flip(frames, _rng(), p=1.0), frames[..., ::-1])
    np.testing.assert_array_equal(aug.horizontal_flip(frames, _rng(), p=0.0), frames)
    mixed = aug.horizontal_flip(frames, _rng(5), p=0.5)
    flipped = [np.array_equal(mixed[i], frames[i, ..., ::-1]) for i in range(4)]
    kept = [np.array_equal(mixed[i], frames[i]) for i in range(4)]
    assert all(a != b for a, b in zip(flipped, kept))


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 10 ** 6), tm=st.integers(0, 3), fm=st.integers(0, 3),
       mt=st.floats(0, 0.5), mf=st.floats(0, 0.5))
def test_spec_augment_masks_whole_bands_with_the_mean(seed, tm, fm, mt, mf):
    audio = _batch(b=3, size=16, seed=seed).audio
    out = aug.spec_augment(audio, _rng(seed), time_masks=tm, max_time=mt, freq_masks=fm, max_freq=mf)
    for i in range(3):
        changed = out[i, 0] != audio[i, 0]
        np.testing.assert_allclose(out[i, 0][changed], audio[i].mean(), rtol=1e-6)
        rows = changed.all(axis=1).sum()
        cols = changed.all(axis=0).sum()
        assert rows <= fm * int(mf * 16) and cols <= tm * int(mt * 16)
        # every changed entry lies in a fully masked row or column
        assert not (changed & ~changed.all(axis=1, keepdims=True) & ~changed.all(axis=0, keepdims=True)).any()


def test_mixup_mixes_inputs_and_labels_with_one_lambda():
    batch = _batch(b=6)
    out = aug.Mixup(alpha=0.5)(batch, _rng(4))
    rng = _rng(4)                                 # the documented draws: lam, then the pairing
    lam, perm = rng.beta(0.5, 0.5), rng.permutation(6)
    assert out.lam == lam and 0.0 <= lam <= 1.0
    np.testing.assert_array_equal(out.labels, batch.labels)
    np.testing.assert_array_equal(out.labels_b, batch.labels[perm])
    np.testing.assert_allclose(out.audio, lam * batch.audio + (1 - lam) * batch.audio[perm], atol=1e-6)
    np.testing.assert_allclose(out.frames, out.lam * batch.frames + (1 - out.lam) * batch.frames[perm], atol=1e-6)
    targets = out.targets(3, smoothing=0.1)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert targets.shape == (6, 3)
    with pytest.raises(ValueError, match="already mixed"):
        aug.Mixup()(out, _rng())
    np.testing.assert_array_equal(batch.targets(3), np.eye(3, dtype=np.float32)[batch.labels])


# -- the resize ------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=30)
@given(h=st.integers(1, 40), w=st.integers(1, 40), oh=st.integers(1, 40), ow=st.integers(1, 40),
       seed=st.integers(0, 1000))
def test_resize_matches_pillow_bilinear(h, w, oh, ow, seed):
    from PIL import Image
    x = _rng(seed).random((h, w)).astype(np.float32)
    ours = resize2d(x, oh, ow)
    theirs = np.asarray(Image.fromarray(x, mode="F").resize((ow, oh), Image.BILINEAR))
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


def test_resize_weights_properties():
    w = resize_weights(257, 32)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w >= 0).all() and (w > 0).sum(axis=1).min() >= 8            # antialiased: wide support
    np.testing.assert_array_equal(resize_weights(7, 7), np.eye(7))
    with pytest.raises(ValueError):
        resize_weights(0, 3)
