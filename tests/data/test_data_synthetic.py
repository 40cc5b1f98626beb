"""The embedded synthetic data set: determinism, balance, and the SPEC section 9 ceilings measured
with a logistic regression on pooled features (audio alone <= 50%, visual alone <= 25%, both 100%)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from refsnn.data import load_dataset, synthetic
from refsnn.data.audio import SAMPLE_RATE, log_spectrogram


def test_same_seed_same_arrays_other_seed_other_arrays():
    a = synthetic._generate(split="val", seed=5, image_size=16, n=24, num_frames=2, noise=1.0, duration=0.5)
    b = synthetic._generate(split="val", seed=5, image_size=16, n=24, num_frames=2, noise=1.0, duration=0.5)
    c = synthetic._generate(split="val", seed=6, image_size=16, n=24, num_frames=2, noise=1.0, duration=0.5)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
    # a clip does not depend on the size of its split
    d = synthetic._generate(split="val", seed=5, image_size=16, n=40, num_frames=2, noise=1.0, duration=0.5)
    same = d[2][:24] == a[2]
    np.testing.assert_array_equal(d[0][:24][same], a[0][same])
    np.testing.assert_array_equal(d[1][:24][same], a[1][same])


def test_dataset_interface_and_balance():
    ds = load_dataset("synthetic", "test", image_size=16, n_test=40, num_frames=3, duration=0.5)
    assert (ds.name, ds.split, ds.num_classes, ds.image_size, ds.num_frames, len(ds)) == \
        ("synthetic", "test", 8, 16, 3, 40)
    assert ds.class_names[0] == "tone+disc" and ds.class_names[7] == "noise-burst+bar"
    assert list(ds.class_counts()) == [5] * 8
    item = ds[3]
    assert item.audio.shape == (1, 16, 16) and item.audio.dtype == np.float32
    assert item.frames.shape == (3, 3, 16, 16) and item.frames.dtype == np.float32
    assert 0.0 <= item.frames.min() and item.frames.max() <= 1.0
    assert item.clip_id == "synthetic-test-00003" and item.label == ds.labels[3]
    audio, frames, labels = ds.arrays([3, 0, -1])
    np.testing.assert_array_equal(audio[0], item.audio)
    np.testing.assert_array_equal(frames[0], item.frames)
    assert list(labels) == [ds.labels[3], ds.labels[0], ds.labels[39]]
    audio[:] = 0                                            # the arrays are the caller's own
    assert ds[3].audio.any()
    splits = {sp: load_dataset("synthetic", sp, image_size=16, n_train=16, n_val=8, n_test=8, duration=0.5)
              for sp in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [16, 8, 8]
    assert not np.array_equal(splits["val"].arrays([0])[0], splits["test"].arrays([0])[0])


def test_audio_goes_through_the_shared_spectrogram_path():
    label = 5                                              # pulses + bar
    ds = synthetic._generate(split="test", seed=0, image_size=16, n=8, num_frames=2, noise=1.0, duration=0.5)
    i = int(np.nonzero(ds[2] == label)[0][0])
    rng = np.random.Generator(np.random.PCG64([0, 2, i]))
    wave = synthetic.render_audio(label // 2, rng, duration=0.5, noise=1.0)
    np.testing.assert_array_equal(ds[0][i], log_spectrogram(wave, SAMPLE_RATE, 16))


@pytest.mark.parametrize("bad, pattern", [
    (dict(n_train=-1), "n_train: expected a non-negative integer"),
    (dict(num_frames=0), "num_frames: expected a positive integer"),
    (dict(noise=-0.5), "noise: expected a number >= 0"),
    (dict(colour="red"), r"unknown option\(s\) \['colour'\]"),
    (dict(image_size=4), "image_size: expected an integer >= 8"),
    (dict(seed=-1), "seed: expected a non-negative integer"),
])
def test_bad_options(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_dataset("synthetic", "train", **{"image_size": 16, "n_train": 8, **bad})


def test_unknown_names_and_splits():
    with pytest.raises(ValueError, match="split: expected one of"):
        load_dataset("synthetic", "validation")
    with pytest.raises(ValueError, match="name: expected one of"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="split 'val' is empty"):
        load_dataset("synthetic", "val", image_size=16, n_val=0)


# -- ceilings -------------------------------------------------------------------------------------
def _audio_features(audio: np.ndarray) -> np.ndarray:
    """Pitch- and onset-invariant pooled statistics of the log-spectrogram [n, 1, H, W]."""
    a = audio[:, 0]
    n = a.shape[0]
    rows = -np.sort(-a.mean(axis=2), axis=1)                       # frequency profile, sorted
    cols = -np.sort(-a.mean(axis=1), axis=1)                       # time profile, sorted
    flux = -np.sort(-np.abs(np.diff(a, axis=2)).mean(axis=2), axis=1)   # on/off changes per row
    pool = lambda x: x.reshape(n, 8, -1).mean(axis=2)               # noqa: E731
    return np.concatenate([pool(rows), pool(cols), pool(flux)], axis=1)


def _visual_features(frames: np.ndarray) -> np.ndarray:
    """Pooled shape statistics of the saturated (coloured) pixels of frames [n, F, 3, H, W]."""
    sat = frames.max(axis=2) - frames.min(axis=2)
    h, w = sat.shape[-2:]
    weight = np.clip(sat - 0.3, 0, None)
    yy, xx = np.mgrid[0:h, 0:w]
    mass = weight.sum(axis=(2, 3)) + 1e-6
    moment = lambda f: (weight * f).sum(axis=(2, 3)) / mass        # noqa: E731
    my, mx = moment(yy), moment(xx)
    cyy, cxx, cxy = moment(yy ** 2) - my ** 2, moment(xx ** 2) - mx ** 2, moment(xx * yy) - mx * my
    half_trace, det = (cxx + cyy) / 2, cxx * cyy - cxy ** 2
    root = np.sqrt(np.maximum(half_trace ** 2 - det, 0))
    big, small = half_trace + root, half_trace - root               # principal second moments
    return np.stack([(small / (big + 1e-6)).mean(1), np.log(mass).mean(1), big.mean(1) / h ** 2,
                     small.mean(1) / h ** 2], axis=1)


def _logistic_regression_accuracy(x_train, y_train, x_test, y_test, classes=8, l2=1e-3) -> float:
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    add_bias = lambda x: np.hstack([(x - mu) / sd, np.ones((len(x), 1))])   # noqa: E731
    xtr, xte = add_bias(x_train), add_bias(x_test)
    onehot = np.eye(classes)[y_train]

    def loss_and_grad(flat):
        w = flat.reshape(xtr.shape[1], classes)
        z = xtr @ w
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.mean(np.sum(onehot * np.log(p + 1e-12), axis=1)) + l2 * np.sum(w ** 2)
        return loss, (xtr.T @ (p - onehot) / len(xtr) + 2 * l2 * w).ravel()

    flat = minimize(loss_and_grad, np.zeros(xtr.shape[1] * classes), jac=True, method="L-BFGS-B",
                    options=dict(maxiter=500)).x
    return float(np.mean((xte @ flat.reshape(xtr.shape[1], classes)).argmax(axis=1) == y_test))


def test_modality_ceilings_with_logistic_regression():
    kw = dict(image_size=32, seed=0, n_train=800, n_test=800)
    train, test = load_dataset("synthetic", "train", **kw), load_dataset("synthetic", "test", **kw)
    a_tr, f_tr, y_tr = train.arrays(range(len(train)))
    a_te, f_te, y_te = test.arrays(range(len(test)))
    fa_tr, fa_te = _audio_features(a_tr), _audio_features(a_te)
    fv_tr, fv_te = _visual_features(f_tr), _visual_features(f_te)
    audio_acc = _logistic_regression_accuracy(fa_tr, y_tr, fa_te, y_te)
    visual_acc = _logistic_regression_accuracy(fv_tr, y_tr, fv_te, y_te)
    both_acc = _logistic_regression_accuracy(np.hstack([fa_tr, fv_tr]), y_tr, np.hstack([fa_te, fv_te]), y_te)
    # each modality is fully informative about its own half of the label ...
    assert _logistic_regression_accuracy(fa_tr, y_tr // 2, fa_te, y_te // 2, classes=4) > 0.95
    assert _logistic_regression_accuracy(fv_tr, y_tr % 2, fv_te, y_te % 2, classes=2) > 0.95
    # ... so alone it reaches its ceiling and no more, and together they solve the task
    assert 0.42 <= audio_acc <= 0.55, audio_acc
    assert 0.20 <= visual_acc <= 0.30, visual_acc
    assert both_acc > 0.90, both_acc


def test_noise_free_and_noisy_variants_render():
    quiet = load_dataset("synthetic", "val", image_size=16, n_val=8, noise=0.0, duration=0.5)
    loud = load_dataset("synthetic", "val", image_size=16, n_val=8, noise=3.0, duration=0.5)
    a_q, f_q, _ = quiet.arrays(range(8))
    a_l, f_l, _ = loud.arrays(range(8))
    assert np.isfinite(a_q).all() and np.isfinite(a_l).all()
    # more distractor noise: a higher spectrogram floor and busier frames
    assert np.median(a_l) > np.median(a_q)
    assert np.abs(np.diff(f_l, axis=-1)).mean() > np.abs(np.diff(f_q, axis=-1)).mean()
