"""Video and image decoding: the ffmpeg binary shipped by the imageio-ffmpeg wheel, never a system one.

- ``decode_frames(path, fps)``: RGB frames sampled at ``fps`` (ffmpeg's ``fps`` filter), at the
  video's own size, as uint8 ``[n, h, w, 3]`` (ffmpeg writes them as a stream of binary PPMs on
  its stdout, each with its own size header).
- ``decode_audio_track(path)``: the first audio stream as float32 ``[n, channels]`` at its own
  rate (ffmpeg writes a float WAV to its stdout; mono mixing and resampling happen in
  ``refsnn.data.audio``, the same code as for wav files).
- ``frames_to_input(frames, image_size, num_frames)``: ``num_frames`` frames picked at the centres
  of equal segments (SPEC section 6's rule for F != T), resized (``refsnn.data.resize``), as
  uint8 ``[F, 3, S, S]``; ``read_frames`` returns them as float32 in [0, 1].

Every decoding problem is a ``MediaError`` whose message is the reason shown by ``prepare``.
"""
from __future__ import annotations

import os
import re
import subprocess

import numpy as np

from .audio import read_audio_bytes
from .base import MediaError
from .resize import resize2d

__all__ = [
    "ffmpeg_exe", "decode_frames", "decode_audio_track", "read_image", "read_image_folder",
    "select_frames", "frames_to_input", "read_frames", "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_TIMEOUT_S = 600
_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary inside the imageio-ffmpeg wheel."""
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: list, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", *args],
                              capture_output=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise MediaError(f"ffmpeg timed out after {_TIMEOUT_S} s decoding the {what}") from None


def _first_error(stderr: bytes) -> str:
    """ffmpeg's first error line, without its ``[component @ 0x...]`` prefix (the root cause;
    the later lines repeat it in general terms)."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln.strip())
             for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if any(w in ln.lower() for w in ("error", "invalid", "not found", "no such",
                                                                   "matches no streams", "partial file"))]
    return (errors or lines or ["no message"])[0][:300]


def _container_duration(stderr: bytes) -> float | None:
    m = _DURATION.search(stderr.decode("utf-8", "replace"))
    if not m:
        return None
    h, mnt, sec = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + float(sec)


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise MediaError(f"missing file {path}")
    if os.path.getsize(path) == 0:
        raise MediaError(f"empty file {path}")


def _parse_ppm_stream(data: bytes) -> list:
    """Split ffmpeg's ``image2pipe`` PPM (P6, maxval 255) output into ``[h, w, 3]`` uint8 frames."""
    frames, pos, n = [], 0, len(data)
    token = re.compile(rb"\s*(?:#[^\n]*\n\s*)*(\S+)")
    while pos < n:
        fields = []
        for _ in range(4):
            m = token.match(data, pos)
            if m is None:
                raise MediaError("ffmpeg produced an unreadable frame stream")
            fields.append(m.group(1))
            pos = m.end()
        if fields[0] != b"P6" or fields[3] != b"255":
            raise MediaError(f"ffmpeg produced an unexpected frame header {fields!r}")
        w, h = int(fields[1]), int(fields[2])
        pos += 1                                     # the single whitespace after maxval
        size = w * h * 3
        if pos + size > n:
            raise MediaError("ffmpeg frame stream ended inside a frame")
        frames.append(np.frombuffer(data, dtype=np.uint8, count=size, offset=pos).reshape(h, w, 3))
        pos += size
        while pos < n and data[pos:pos + 1].isspace():
            pos += 1
    return frames


def _run_decoder(path: str, args: list, what: str, no_stream: str, *, quiet: bool) -> subprocess.CompletedProcess:
    """ffmpeg on one stream of ``path``: a failed run, a missing stream or a partial file is a
    ``MediaError`` naming ``what``. ``quiet=False`` keeps the input description on stderr (its
    ``Duration:``)."""
    proc = _run_ffmpeg([*(["-v", "error"] if quiet else []), "-i", path, *args], what)
    text = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        if "matches no streams" in text:
            raise MediaError(no_stream)
        raise MediaError(f"corrupt {what} (ffmpeg: {_first_error(proc.stderr)})")
    if "partial file" in text:
        raise MediaError(f"truncated {what} (ffmpeg: {_first_error(proc.stderr)})")
    return proc


def decode_frames(path: str | os.PathLike, fps: float) -> tuple[np.ndarray, float | None]:
    """RGB frames at ``fps``: (uint8 ``[n, h, w, 3]``, container duration in s or None)."""
    path = os.fspath(path)
    _check_file(path)
    if not fps > 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    proc = _run_decoder(path, ["-map", "0:v:0", "-an", "-vf", f"fps={fps:g}", "-f", "image2pipe",
                               "-c:v", "ppm", "pipe:1"], "video", "no video track", quiet=False)
    frames = _parse_ppm_stream(proc.stdout)
    duration = _container_duration(proc.stderr)
    if not frames:
        shown = f"{duration:.2f} s" if duration is not None else "unknown duration"
        raise MediaError(f"very short video: no frame at {fps:g} fps ({shown})")
    return np.stack(frames), duration


def decode_audio_track(path: str | os.PathLike, container_duration: float | None = None
                       ) -> tuple[np.ndarray, int]:
    """The first audio stream: (float32 ``[n, channels]``, sample rate).

    A clip whose decoded audio is much shorter than the container says (less than 90% of it,
    minus 0.5 s) is reported as truncated.
    """
    path = os.fspath(path)
    _check_file(path)
    proc = _run_decoder(path, ["-map", "0:a:0", "-vn", "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"],
                        "audio track", "video has no audio track", quiet=True)
    wave, rate = read_audio_bytes(proc.stdout)
    seconds = wave.shape[0] / rate
    if container_duration is not None and seconds < 0.9 * container_duration - 0.5:
        raise MediaError(f"truncated audio track: decoded {seconds:.2f} s of {container_duration:.2f} s")
    return wave, rate


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One still image as RGB uint8 ``[h, w, 3]`` (grey is repeated, alpha dropped)."""
    import imageio.v3 as iio
    path = os.fspath(path)
    _check_file(path)
    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # PIL / imageio raise many kinds on truncated or corrupt files
        raise MediaError(f"unreadable image {os.path.basename(path)} ({type(exc).__name__}: {exc})") from None
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise MediaError(f"unexpected image shape {img.shape} in {os.path.basename(path)}")
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.integer):        # 16-bit images
            img = (img.astype(np.float64) / np.iinfo(img.dtype).max * 255.0).round()
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def read_image_folder(folder: str | os.PathLike) -> np.ndarray:
    """Every image of a folder of pre-extracted frames, in name order -> uint8 ``[n, h, w, 3]``.

    Frames of different sizes are an error (a clip's frames come from one video).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise MediaError(f"missing frame folder {folder}")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise MediaError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) in frame folder {folder}")
    images = [read_image(os.path.join(folder, f)) for f in names]
    if len({im.shape for im in images}) != 1:
        raise MediaError(f"frames of different sizes in {folder}")
    return np.stack(images)


def select_frames(n: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` of ``n`` frames: the centres of equal segments, floor((2i+1)n/(2F))."""
    if n < 1 or num_frames < 1:
        raise ValueError(f"select_frames: expected n >= 1 and num_frames >= 1, got {n}, {num_frames}")
    i = np.arange(num_frames)
    return (2 * i + 1) * n // (2 * num_frames)


def frames_to_input(frames: np.ndarray, image_size: int, num_frames: int) -> np.ndarray:
    """uint8 ``[n, h, w, 3]`` -> the cached form uint8 ``[num_frames, 3, S, S]``."""
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames: expected [n, h, w, 3], got {frames.shape}")
    picked = frames[select_frames(frames.shape[0], num_frames)].transpose(0, 3, 1, 2)   # [F, 3, h, w]
    resized = resize2d(picked.astype(np.float32), image_size, image_size)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def read_frames(path: str | os.PathLike, fps: float, image_size: int,
                num_frames: int | None = None) -> np.ndarray:
    """A video's frames at ``fps``, resized, as float32 ``[n, 3, S, S]`` in [0, 1].

    ``num_frames`` given: that many frames, picked as in ``frames_to_input``.
    """
    raw, _ = decode_frames(path, fps)
    out = frames_to_input(raw, image_size, raw.shape[0] if num_frames is None else num_frames)
    return out.astype(np.float32) / np.float32(255.0)
