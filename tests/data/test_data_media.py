"""The audio path (mono, resampling, STFT, log, resize) and ffmpeg / image decoding."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.signal
import soundfile

import datafactory as fac
from refsnn.data import MediaError
from refsnn.data.audio import (HOP, N_FFT, SAMPLE_RATE, check_waveform, log_spectrogram, read_audio, resample,
                               stft_magnitude, to_mono)
from refsnn.data.video import (_parse_ppm_stream, decode_audio_track, decode_frames, frames_to_input,
                               read_frames, read_image, select_frames)


def test_stft_matches_scipy_with_zero_padded_centred_frames():
    x = np.random.Generator(np.random.PCG64(0)).standard_normal(5000)
    ours = stft_magnitude(x)
    window = scipy.signal.get_window("hann", N_FFT)
    _, _, z = scipy.signal.stft(x, window=window, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary="zeros",
                                padded=False)
    assert ours.shape == (N_FFT // 2 + 1, 1 + len(x) // HOP) == z.shape
    np.testing.assert_allclose(ours, np.abs(z) * window.sum(), rtol=1e-9, atol=1e-9)


def test_a_tone_keeps_its_frequency_through_resampling_and_mono_mixing():
    k = 40                                                   # an exact bin: 40 * 22050 / 512 Hz
    freq = k * SAMPLE_RATE / N_FFT
    t = np.arange(2 * 44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * freq * t), 0.5 * np.sin(2 * np.pi * freq * t)], axis=1)
    mono = resample(to_mono(stereo), 44100)
    assert mono.shape == (2 * SAMPLE_RATE,)
    np.testing.assert_allclose(to_mono(stereo), 0.75 * np.sin(2 * np.pi * freq * t))
    spec = stft_magnitude(mono)
    assert int(spec[:, 5:-5].mean(axis=1).argmax()) == k
    img = log_spectrogram(stereo, 44100, 32)
    assert img.shape == (1, 32, 32) and img.dtype == np.float32
    assert int(img[0].mean(axis=1).argmax()) == round((k + 0.5) * 32 / 257 - 0.5)   # bin k's row centre
    assert img.min() >= np.log(1e-7) - 1e-4


def test_waveform_checks():
    check_waveform(np.ones((6000, 1)), 22050, min_seconds=0.25, silence_threshold=1e-4)
    with pytest.raises(MediaError, match="very short audio: 0.100 s"):
        check_waveform(np.ones(2205), 22050, min_seconds=0.25, silence_threshold=1e-4)
    with pytest.raises(MediaError, match="silent audio"):
        check_waveform(np.full(22050, 1e-5), 22050, min_seconds=0.25, silence_threshold=1e-4)
    with pytest.raises(MediaError, match="NaN"):
        check_waveform(np.full(22050, np.nan), 22050, min_seconds=0.25, silence_threshold=1e-4)


def test_read_audio_and_truncated_wav(tmp_path):
    path = fac.write_wav(tmp_path / "a.wav", seconds=1.0, rate=48000, channels=2)
    wave, rate = read_audio(path)
    assert wave.shape == (48000, 2) and rate == 48000 and wave.dtype == np.float32
    fac.truncate(path, 0.5)
    with pytest.raises(MediaError, match="truncated wav"):
        read_audio(path)
    soundfile.write(str(tmp_path / "b.flac"), np.zeros(100), 8000)
    assert read_audio(tmp_path / "b.flac")[0].shape == (100, 1)
    with pytest.raises(MediaError, match="missing file"):
        read_audio(tmp_path / "nothing.wav")
    fac.write_garbage(tmp_path / "g.wav")
    with pytest.raises(MediaError, match="unreadable audio file"):
        read_audio(tmp_path / "g.wav")


def test_select_frames_uses_segment_centres():
    np.testing.assert_array_equal(select_frames(10, 4), [1, 3, 6, 8])       # SPEC section 6 example
    np.testing.assert_array_equal(select_frames(1, 3), [0, 0, 0])
    np.testing.assert_array_equal(select_frames(3, 3), [0, 1, 2])
    with pytest.raises(ValueError):
        select_frames(0, 2)


def test_decode_frames_and_audio_of_an_mp4(tmp_path):
    path = fac.write_mp4(tmp_path / "v.mp4", seconds=3, colour="blue", tone=1000.0, size="40x30", rate=48000)
    frames, duration = decode_frames(path, fps=1)
    assert frames.shape == (3, 30, 40, 3) and frames.dtype == np.uint8 and duration == pytest.approx(3, abs=0.1)
    assert frames[..., 2].mean() > 200 and frames[..., 0].mean() < 40
    assert decode_frames(path, fps=2)[0].shape[0] == 6
    wave, rate = decode_audio_track(path, duration)
    assert rate == 48000 and wave.shape[1] == 2 and wave.shape[0] == pytest.approx(3 * 48000, rel=0.02)
    x = read_frames(path, 1, 16, num_frames=2)
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    with pytest.raises(MediaError, match="truncated audio track"):
        decode_audio_track(path, container_duration=10.0)
    with pytest.raises(MediaError, match="missing file"):
        decode_frames(tmp_path / "none.mp4", 1)
    open(tmp_path / "empty.mp4", "wb").close()
    with pytest.raises(MediaError, match="empty file"):
        decode_frames(tmp_path / "empty.mp4", 1)


def test_frames_to_input_and_ppm_parsing():
    raw = np.zeros((5, 20, 30, 3), np.uint8)
    raw[:, :, :, 1] = np.arange(5)[:, None, None] * 50
    out = frames_to_input(raw, 8, 2)
    assert out.shape == (2, 3, 8, 8) and out.dtype == np.uint8
    assert list(out[:, 1, 0, 0]) == [50, 150]                      # frames 1 and 3 of 5
    one = b"P6\n2 1\n255\n" + bytes([1, 2, 3, 4, 5, 6])
    parsed = _parse_ppm_stream(one + one)
    assert len(parsed) == 2 and parsed[1].tolist() == [[[1, 2, 3], [4, 5, 6]]]
    with pytest.raises(MediaError, match="ended inside a frame"):
        _parse_ppm_stream(one[:-2])


def test_read_image_converts_to_rgb(tmp_path):
    import imageio.v3 as iio
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    iio.imwrite(tmp_path / "g.png", grey)
    rgb = read_image(tmp_path / "g.png")
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == grey).all() and (rgb[..., 2] == grey).all()
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 255
    iio.imwrite(tmp_path / "a.png", rgba)
    assert read_image(tmp_path / "a.png").shape == (3, 4, 3)
    fac.write_jpg(tmp_path / "t.jpg", size=(64, 64))
    fac.truncate(tmp_path / "t.jpg", 0.4)
    with pytest.raises(MediaError, match="unreadable image t.jpg"):
        read_image(tmp_path / "t.jpg")
    assert os.path.exists(tmp_path / "t.jpg")
