"""docs/extending.md, tried: a fusion mode and data sets added from outside the package (this
file), each registered with one line and trained for a step through the public API
(``refsnn.train.fit``), and what the registries refuse."""
import os

import numpy as np
import pytest

from refsnn.checkpoint import load_checkpoint, load_model
from refsnn.data import (Dataset, GeneratedDataset, PreparedDataset, dataset_names, load_dataset,
                         register_dataset, unregister_dataset)
from refsnn.data.base import ClipSource, Manifest, check_split
from refsnn.fusion import build_fusion, fusion_modes, register_fusion, unregister_fusion
from refsnn.fusion.base import common_options, check_upstream
from refsnn.models import CHOICES, SNNergy, config
from refsnn.nn.layers import LIF, BatchNorm, Conv1x1
from refsnn.nn.counting import CONTAINER
from refsnn.nn.module import Module
from refsnn.train import fit

OPTS = dict(epochs=1, batch_size=4, lr=2e-3, warmup_epochs=0.0, threads=1, energy_batches=1,
            progress=False, verbose=False)


# ------------------------------------------------------------------------------- a fusion mode

class CrossGateFusion(Module):
    """Each stream adds spikes computed from the other one (a toy cross-modal fusion)::

        y_a = x_a + LIF(BN(Conv1x1(x_v)))        y_v = x_v + LIF(BN(Conv1x1(x_a)))

    Its energy is that of its layers (the additions are free by SPEC section 7's convention).
    """

    energy_role = CONTAINER

    def __init__(self, dim, *, neuron, attention_neuron, bn_momentum, bn_eps, rng, dtype):
        super().__init__()
        for direction in ("audio_from_visual", "visual_from_audio"):
            setattr(self, f"{direction}_conv", Conv1x1(dim, dim, bias=False, rng=rng, dtype=dtype))
            setattr(self, f"{direction}_bn", BatchNorm(dim, momentum=bn_momentum, eps=bn_eps, dtype=dtype))
            setattr(self, f"{direction}_lif", LIF(**neuron))
        self._shapes = None

    def _direction(self, name, x):
        conv, bn, lif = (getattr(self, f"{name}_{part}") for part in ("conv", "bn", "lif"))
        return lif.forward(bn.forward(conv.forward(x)))

    def _direction_backward(self, name, dy):
        conv, bn, lif = (getattr(self, f"{name}_{part}") for part in ("conv", "bn", "lif"))
        return conv.backward(bn.backward(lif.backward(dy)))

    def forward(self, x_audio, x_visual):
        self._shapes = (x_audio.shape, x_visual.shape)
        return (x_audio + self._direction("audio_from_visual", x_visual),
                x_visual + self._direction("visual_from_audio", x_audio))

    def backward(self, dy_audio, dy_visual):
        check_upstream(dy_audio, dy_visual, *self._shapes)
        return (dy_audio + self._direction_backward("visual_from_audio", dy_visual),
                dy_visual + self._direction_backward("audio_from_visual", dy_audio))


def build_cross_gate(c, stage, dim, heads, *, rng, dtype, previous=None):
    return CrossGateFusion(dim, **common_options(c, rng=rng, dtype=dtype))


@pytest.fixture
def cross_gate():
    register_fusion("cross-gate", build_cross_gate)           # the one registration line
    yield "cross-gate"
    unregister_fusion("cross-gate")


def test_a_registered_fusion_mode_trains_through_fit(cross_gate, tmp_path):
    assert cross_gate in fusion_modes() and cross_gate in CHOICES["fusion"]
    c = config("tiny", fusion=cross_gate)
    model = SNNergy(c, seed=0)
    assert all(isinstance(getattr(model, f"fusion{s}"), CrossGateFusion) for s in (1, 2, 3))
    initial = model.state_dict()["fusion2.audio_from_visual_conv.weight"].copy()
    rep = fit(c, "synthetic", out=tmp_path, data_options=dict(n_train=4, n_val=2, n_test=2),
              seed=0, **OPTS)
    assert rep["status"] == "finished" and rep["config"]["fusion"] == cross_gate
    trained = load_checkpoint(os.path.join(tmp_path, rep["checkpoint"])).model_state
    assert trained["fusion2.audio_from_visual_conv.weight"].shape == initial.shape
    assert not np.array_equal(trained["fusion2.audio_from_visual_conv.weight"], initial)   # a step was taken
    assert isinstance(load_model(os.path.join(tmp_path, rep["checkpoint"])).fusion3, CrossGateFusion)


def test_an_unregistered_fusion_mode_is_refused_by_name():
    with pytest.raises(ValueError, match=r"config field 'fusion': expected one of \[.*'factorized'\], "
                                         r"got 'cross-gate'"):
        config("tiny", fusion="cross-gate")


def test_a_builder_that_returns_no_module_fails_loudly():
    register_fusion("not-a-module", lambda c, stage, dim, heads, *, rng, dtype, previous=None: (dim, heads))
    try:
        with pytest.raises(ValueError, match="'not-a-module': its builder returned a tuple"):
            SNNergy(config("tiny", fusion="not-a-module"))
    finally:
        unregister_fusion("not-a-module")


def test_the_builder_receives_stage_width_heads_and_the_previous_module(cross_gate):
    seen = []

    def spy(c, stage, dim, heads, *, rng, dtype, previous=None):
        seen.append((stage, dim, heads, type(previous).__name__))
        return build_cross_gate(c, stage, dim, heads, rng=rng, dtype=dtype)

    register_fusion("spy", spy)
    try:
        c = config("tiny", fusion="spy")
        SNNergy(c)
        assert seen == [(1, 8, 1, "NoneType"), (2, 16, 1, "CrossGateFusion"), (3, 32, 2, "CrossGateFusion")]
        module = build_fusion(c, 2, 16, 1, rng=np.random.default_rng(0), dtype=np.float64)
        assert module.audio_from_visual_conv.weight.dtype == np.float64
    finally:
        unregister_fusion("spy")


# ------------------------------------------------------------------------------- data sets

class ToyTones:
    """A prepared data set (``PreparedDataset``): per class folder, ``<clip>.wav`` (a tone)
    and ``<clip>.png`` (a still image); clips whose name ends in 0 are test clips,
    validation is a seeded 10% of train."""

    LAYOUT = "<root>/<class>/<clip>.wav and <root>/<class>/<clip>.png"
    DEFAULTS = dict(num_frames=1)
    VAL_FROM = "train"

    def scan(self, root, params):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        clips = []
        for label, cls in enumerate(classes):
            for name in sorted(os.listdir(os.path.join(root, cls))):
                stem, ext = os.path.splitext(name)
                if ext != ".wav":
                    continue
                base = os.path.join(root, cls, stem)
                clips.append(ClipSource(f"{cls}/{stem}", "test" if stem.endswith("0") else "train", label,
                                        base + ".wav", "file", base + ".png", "image"))
        return Manifest("toy-tones", classes, clips)


def write_toy_tones(root, per_class=6):
    sf = pytest.importorskip("soundfile")
    imageio = pytest.importorskip("imageio.v3")
    rate = 22050
    t = np.arange(rate // 2) / rate
    for label, (cls, freq) in enumerate((("low", 300.0), ("high", 3000.0))):
        os.makedirs(root / cls)
        for i in range(per_class):
            sf.write(str(root / cls / f"clip{i}.wav"), 0.5 * np.sin(2 * np.pi * freq * (1 + 0.01 * i) * t), rate)
            image = np.full((40, 40, 3), 60 + 120 * label + 5 * i, dtype=np.uint8)
            imageio.imwrite(str(root / cls / f"clip{i}.png"), image)


@pytest.fixture
def toy_tones():
    register_dataset("toy-tones", ToyTones())                # the one registration line
    yield "toy-tones"
    unregister_dataset("toy-tones")


def test_a_registered_prepared_data_set_trains_through_fit(toy_tones, tmp_path):
    source = ToyTones()
    assert isinstance(source, PreparedDataset) and not isinstance(source, GeneratedDataset)
    assert toy_tones in dataset_names() and toy_tones in dataset_names(PreparedDataset)
    write_toy_tones(tmp_path / "files")
    # fit prepares the cache from the files on first use, then trains
    rep = fit(config("tiny"), toy_tones, out=tmp_path / "run", root=tmp_path / "files",
              cache=tmp_path / "cache", seed=0, **OPTS)
    assert rep["status"] == "finished" and rep["config"]["classes"] == 2
    test = load_dataset(toy_tones, "test", cache=tmp_path / "cache", image_size=32)
    assert len(test) == 2 and test.class_names == ["high", "low"] and test.num_frames == 1
    train = load_dataset(toy_tones, "train", cache=tmp_path / "cache", image_size=32)
    val = load_dataset(toy_tones, "val", cache=tmp_path / "cache", image_size=32)
    assert len(train) + len(val) == 10 and len(val) == 1          # VAL_FROM = "train": a 10% hold-out


class ToyNoise:
    """A generated data set (``GeneratedDataset``): random inputs, label = the clip's parity."""

    DEFAULTS = dict(n=8, num_frames=2)

    def check_options(self, options):
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"toy-noise: unknown option(s) {unknown}; known: {sorted(self.DEFAULTS)}")
        return {**self.DEFAULTS, **options}

    def load(self, split, *, seed, image_size, **options):
        check_split(split)
        opts = self.check_options(options)
        rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
        n, f = opts["n"], opts["num_frames"]
        audio = rng.random((n, 1, image_size, image_size), dtype=np.float32)
        frames = rng.random((n, f, 3, image_size, image_size), dtype=np.float32)
        return Dataset("toy-noise", split, ["even", "odd"], audio, frames, np.arange(n) % 2,
                       [f"{split}{i}" for i in range(n)])


def test_a_registered_generated_data_set_trains_through_fit(tmp_path):
    register_dataset("toy-noise", ToyNoise())
    try:
        assert isinstance(ToyNoise(), GeneratedDataset)
        assert "toy-noise" not in dataset_names(PreparedDataset)
        rep = fit(config("tiny"), "toy-noise", out=tmp_path, data_options=dict(n=4), seed=0, **OPTS)
        assert rep["status"] == "finished" and rep["config"]["classes"] == 2
        with pytest.raises(ValueError, match=r"--data-option: toy-noise: unknown option\(s\) \['frames'\]"):
            fit(config("tiny"), "toy-noise", out=tmp_path / "bad", data_options=dict(frames=2), **OPTS)
    finally:
        unregister_dataset("toy-noise")
    with pytest.raises(ValueError, match="name: expected one of"):
        load_dataset("toy-noise", "train")


def test_the_data_set_registry_refuses_what_is_incomplete_or_taken():
    class NoScan:
        LAYOUT, DEFAULTS, VAL_FROM = "<root>/", dict(num_frames=1), "train"

    with pytest.raises(ValueError, match=r"as a PreparedDataset it lacks \['scan'\], as a GeneratedDataset "
                                         r"\['check_options', 'load'\]"):
        register_dataset("no-scan", NoScan())
    bad_val = ToyTones()
    bad_val.VAL_FROM = "elsewhere"
    with pytest.raises(ValueError, match=r"VAL_FROM of data set 'bad': expected one of \['file', 'train'\]"):
        register_dataset("bad", bad_val)
    with pytest.raises(ValueError, match="data set 'ave' is already registered"):
        register_dataset("ave", ToyTones())
    assert "no-scan" not in dataset_names() and "bad" not in dataset_names()
    assert dataset_names()[:4] == ("synthetic", "ave", "cremad", "urbansound8k-av")
