"""Tiny data sets in the real on-disk layouts, written with real encoders.

mp4: h264 video + aac audio, flv: Sorenson video, both by the imageio-ffmpeg binary; wav by
soundfile; jpg by imageio. Colours and tone frequencies are chosen per clip so tests can check
that the decoded content is the clip's own.
"""
from __future__ import annotations

import os
import subprocess

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import soundfile

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg(*args) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True)


def write_mp4(path, *, seconds=1.5, colour="red", tone=440.0, audio="tone", size="32x24", fps=8,
              rate=44100, faststart=False) -> str:
    """audio: ``tone`` (stereo sine), ``silent`` (zeros) or ``none`` (no audio track)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    args = ["-f", "lavfi", "-i", f"color=c={colour}:size={size}:rate={fps}"]
    if audio == "tone":
        args += ["-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate={rate}"]
    elif audio == "silent":
        args += ["-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=stereo"]
    args += ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio != "none":
        args += ["-c:a", "aac", "-ac", "2"]
    if faststart:
        args += ["-movflags", "+faststart"]
    _ffmpeg(*args, os.fspath(path))
    return os.fspath(path)


def write_flv(path, *, seconds=1.5, colour="blue", size="32x24", fps=8) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _ffmpeg("-f", "lavfi", "-i", f"color=c={colour}:size={size}:rate={fps}", "-t", str(seconds),
            "-c:v", "flv", os.fspath(path))
    return os.fspath(path)


def write_wav(path, *, seconds=1.0, tone=440.0, rate=44100, channels=2, silent=False) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = np.zeros_like(t) if silent else 0.5 * np.sin(2 * np.pi * tone * t)
    soundfile.write(os.fspath(path), np.repeat(wave[:, None], channels, axis=1), rate, subtype="PCM_16")
    return os.fspath(path)


def write_jpg(path, *, rgb=(200, 30, 30), size=(24, 32)) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.empty((*size, 3), dtype=np.uint8)
    img[...] = rgb
    iio.imwrite(os.fspath(path), img, extension=".jpg")
    return os.fspath(path)


def truncate(path, fraction=0.5) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * fraction)])


def write_garbage(path, nbytes=2000) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(np.random.Generator(np.random.PCG64(0)).integers(0, 256, nbytes, dtype=np.uint8).tobytes())


# -- AVE ---------------------------------------------------------------------------------------
AVE_COLOURS = {"Church bell": ("red", 440.0), "Dog": ("blue", 2000.0), "Truck": ("green", 5000.0)}


def make_ave(root, splits: dict, *, header=True, extra_annotation_rows=(), write_videos=True) -> str:
    """splits: {"train": [(category, id), ...], "val": [...], "test": [...]}.

    Annotations.txt lists every row of the split files (like AVE), plus ``extra_annotation_rows``.
    """
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "AVE"), exist_ok=True)
    files = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
    all_rows = []
    for split, rows in splits.items():
        lines = [f"{cat}&{vid}&good&0&10" for cat, vid in rows]
        all_rows += lines
        with open(os.path.join(root, files[split]), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
        if write_videos:
            for cat, vid in rows:
                path = os.path.join(root, "AVE", f"{vid}.mp4")
                if not os.path.exists(path):
                    colour, tone = AVE_COLOURS[cat]
                    write_mp4(path, colour=colour, tone=tone)
    with open(os.path.join(root, "Annotations.txt"), "w") as f:
        if header:
            f.write("Category&VideoID&Quality&StartTime&EndTime\n")
        f.write("\n".join(all_rows + list(extra_annotation_rows)) + "\n")
    return root


# -- CREMA-D ---------------------------------------------------------------------------------
def make_cremad(root, train: list, test: list, *, frames_dirs=(), header=True) -> str:
    """train/test: [(clip, emo)]; clips in ``frames_dirs`` get a folder of jpgs instead of an flv."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    tones = {"NEU": 300.0, "HAP": 600.0, "SAD": 1200.0, "FEA": 2400.0, "DIS": 4000.0, "ANG": 6000.0}
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with open(os.path.join(root, name), "w") as f:
            if header and name == "train.csv":
                f.write("clip,EMO\n")
            f.write("".join(f"{clip},{emo}\n" for clip, emo in rows))
        for clip, emo in rows:
            write_wav(os.path.join(root, "AudioWAV", f"{clip}.wav"), tone=tones[emo])
            if clip in frames_dirs:
                for k in range(3):
                    write_jpg(os.path.join(root, "VideoFlash", clip, f"frame_{k:03d}.jpg"), rgb=(20, 200, 20))
            else:
                write_flv(os.path.join(root, "VideoFlash", f"{clip}.flv"))
    return root


# -- UrbanSound8K-AV ----------------------------------------------------------------------------
US8K_CLASSES = {"car_horn": ((220, 20, 20), 800.0), "dog_bark": ((20, 20, 220), 3000.0)}


def make_us8k(root, stems_per_class: dict) -> str:
    """stems_per_class: {class: [stem, ...]}; each stem gets a wav and a jpg."""
    root = os.fspath(root)
    for cls, stems in stems_per_class.items():
        rgb, tone = US8K_CLASSES.get(cls, ((128, 128, 128), 1000.0))
        os.makedirs(os.path.join(root, "Dataset_v3_sound", cls), exist_ok=True)
        os.makedirs(os.path.join(root, "Dataset_v3_vision", cls), exist_ok=True)
        for stem in stems:
            write_wav(os.path.join(root, "Dataset_v3_sound", cls, f"{stem}.wav"), tone=tone, rate=48000)
            write_jpg(os.path.join(root, "Dataset_v3_vision", cls, f"{stem}.jpg"), rgb=rgb)
    return root
