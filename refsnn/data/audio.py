"""The one audio path (SPEC section 9), shared by the synthetic data set and every real one.

waveform ``[n]`` or ``[n, channels]`` at any rate
  -> mono (mean of the channels)
  -> resampled to 22,050 Hz (polyphase, ``scipy.signal.resample_poly``, Kaiser window)
  -> |STFT|: periodic Hann window, n_fft 512, hop 353, frames centred (n_fft/2 zeros padded at
     both ends, as librosa >= 0.10 does), 257 frequency rows (row 0 = 0 Hz) x (1 + n // 353)
     time columns
  -> ``log(|X| + 1e-7)``
  -> resized to ``image_size x image_size`` (``refsnn.data.resize``: antialiased bilinear)
  -> float32 ``[1, image_size, image_size]``.
"""
from __future__ import annotations

import io
import os
from math import gcd

import numpy as np
import soundfile

from .base import MediaError
from .resize import resize2d

__all__ = [
    "SAMPLE_RATE", "N_FFT", "HOP", "LOG_EPS", "to_mono", "resample", "stft_magnitude",
    "log_spectrogram", "read_audio", "read_audio_bytes", "check_waveform", "spectrogram_from_waveform",
]

SAMPLE_RATE = 22050
N_FFT = 512
HOP = 353
LOG_EPS = 1e-7


def to_mono(wave: np.ndarray) -> np.ndarray:
    """``[n]`` or ``[n, channels]`` -> ``[n]`` float64 (mean over channels)."""
    wave = np.asarray(wave)
    if wave.ndim == 1:
        return wave.astype(np.float64)
    if wave.ndim == 2:
        return wave.astype(np.float64).mean(axis=1)
    raise ValueError(f"wave: expected shape [n] or [n, channels], got {wave.shape}")


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a mono ``[n]`` waveform from ``rate`` to ``target`` Hz."""
    rate, target = int(rate), int(target)
    if rate < 1 or target < 1:
        raise ValueError(f"rate: expected positive sample rates, got rate={rate}, target={target}")
    if rate == target:
        return np.asarray(wave, dtype=np.float64)
    g = gcd(rate, target)
    # imported here: scipy.signal takes 2 s to import, and only real audio files need it
    from scipy.signal import resample_poly
    return resample_poly(np.asarray(wave, dtype=np.float64), target // g, rate // g)


def _hann(n: int) -> np.ndarray:
    # periodic Hann (scipy.signal.get_window("hann", n), librosa's default)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft_magnitude(wave: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """``|STFT|`` of a mono waveform ``[n]`` -> ``[n_fft // 2 + 1, 1 + n // hop]`` float64."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"wave: expected a mono waveform [n], got shape {wave.shape}")
    padded = np.pad(wave, n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]   # [frames, n_fft]
    return np.abs(np.fft.rfft(frames * _hann(n_fft), axis=1)).T


def log_spectrogram(wave: np.ndarray, rate: int, image_size: int) -> np.ndarray:
    """The model's audio input: ``[1, image_size, image_size]`` float32 (module docstring)."""
    mono = resample(to_mono(wave), rate, SAMPLE_RATE)
    spec = np.log(stft_magnitude(mono) + LOG_EPS)
    return resize2d(spec, image_size, image_size).astype(np.float32)[None]


def check_waveform(wave: np.ndarray, rate: int, *, min_seconds: float, silence_threshold: float) -> None:
    """Raise ``MediaError`` for a clip too short or silent to give a meaningful spectrogram."""
    n = wave.shape[0]
    seconds = n / float(rate)
    if seconds < min_seconds:
        raise MediaError(f"very short audio: {seconds:.3f} s (minimum {min_seconds} s)")
    if not np.isfinite(wave).all():
        raise MediaError("audio contains NaN or inf samples")
    peak = float(np.max(np.abs(wave))) if n else 0.0
    if peak < silence_threshold:
        raise MediaError(f"silent audio: peak amplitude {peak:.3g} < {silence_threshold:g}")


def spectrogram_from_waveform(wave: np.ndarray, rate: int, image_size: int, *,
                              min_seconds: float, silence_threshold: float) -> np.ndarray:
    """Checks (short, silent) then ``log_spectrogram``."""
    check_waveform(wave, rate, min_seconds=min_seconds, silence_threshold=silence_threshold)
    return log_spectrogram(wave, rate, image_size)


def _check_wav_complete(path: str) -> None:
    """libsndfile silently reads the samples that remain of a truncated WAV: compare the size
    its ``data`` chunk declares with the bytes the file holds."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                available = size - pos - 8
                if declared not in (0, 0xFFFFFFFF) and available < declared:
                    raise MediaError(f"truncated wav: the data chunk holds {available} of {declared} bytes")
                return
            pos += 8 + declared + (declared & 1)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file (wav, flac, ogg ... through soundfile) -> (``[n, channels]`` float32, rate).

    A truncated WAV is a ``MediaError`` (not a shorter clip)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"missing file {path}")
    _check_wav_complete(path)
    try:
        wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile.LibsndfileError, RuntimeError, OSError
        raise MediaError(f"unreadable audio file ({type(exc).__name__}: {exc})") from None
    return wave, int(rate)


def read_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an in-memory audio file (the wav that ffmpeg pipes out of a video)."""
    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise MediaError(f"undecodable audio track ({type(exc).__name__}: {exc})") from None
    return wave, int(rate)
