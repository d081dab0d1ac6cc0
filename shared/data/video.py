"""Reading and writing clips: GIF through Pillow, MP4 (and other containers) through PyAV.

Every function speaks uint8 arrays shaped (F, H, W, 3): the layout the dataset caches and both
backends convert from. Writers go through a temporary file and a rename, so an interrupted run
never leaves a truncated video that a later run would mistake for a finished one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.io_atomic import atomic_path

GIF_SUFFIXES = (".gif",)
AV_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
VIDEO_SUFFIXES = GIF_SUFFIXES + AV_SUFFIXES
_UMASK = os.umask(0o022)  # read once (the only way is to set it), then put back
os.umask(_UMASK)


class VideoError(RuntimeError):
    """A file that cannot be read as a video; the message names the file."""


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame to RGB uint8 (F, H, W, 3); also return frames per second."""
    path = Path(path)
    try:
        if path.suffix.lower() in GIF_SUFFIXES:
            frames, fps = _read_gif(path)
        else:
            frames, fps = _read_av(path)
    except VideoError:
        raise
    except Exception as e:  # decoders raise many types for damaged files
        raise VideoError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
    if len(frames) == 0:
        raise VideoError(f"{path}: no frames")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoError(f"{path}: frames change size mid-clip {sorted(shapes)}")
    return np.stack(frames), fps


def _read_gif(path: Path) -> tuple[list[np.ndarray], float]:
    """GIF writers merge identical consecutive frames into one longer frame (Pillow always
    does), so frames are expanded back onto a constant-rate timeline: the delays' common
    divisor, or the shortest delay when the timings are irregular."""
    frames, durations = [], []
    with Image.open(path) as im:
        for index in range(getattr(im, "n_frames", 1)):
            im.seek(index)
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(im.info.get("duration", 100) or 100)
    base = math.gcd(*durations)
    if base < min(durations) / 4:
        base = min(durations)
    repeats = [max(1, round(d / base)) for d in durations]
    return [f for f, r in zip(frames, repeats) for _ in range(r)], 1000.0 / base


def _read_av(path: Path) -> tuple[list[np.ndarray], float]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, fps


def write_video(path: str | Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    """Write a GIF or an MP4 by the file's suffix."""
    path = Path(path)
    frames = _as_uint8_video(frames)
    suffix = path.suffix.lower()
    if suffix in GIF_SUFFIXES:
        writer = _write_gif
    elif suffix in AV_SUFFIXES:
        writer = _write_av
    else:
        raise VideoError(f"{path}: unknown video suffix; use one of {', '.join(VIDEO_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, prefix=f".{path.stem}.", suffix=path.suffix) as tmp:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide clips from a results page served
        writer(tmp, frames, fps)  # or shared by another user; files get the usual mode
    return path


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    # One adaptive palette shared by all frames keeps colours steady from frame to frame; it is
    # fitted to a stack of (up to ~half a million pixels of) frames so late colours are not lost.
    stride = max(1, int(np.ceil(frames[0].size / 3 * len(frames) / 500_000)))
    montage = Image.fromarray(np.concatenate(list(frames[::stride]), axis=0))
    palette = montage.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    paletted = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    paletted[0].save(path, format="GIF", save_all=True, append_images=paletted[1:],
                     duration=max(20, round(1000.0 / fps)), loop=0, optimize=False, disposal=1)


def _write_av(path: Path, frames: np.ndarray, fps: float) -> None:
    import av

    # yuv420p wants even sides: pad by repeating the last row / column.
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format=_container_format(path)) as container:
        stream = container.add_stream("libx264" if path.suffix.lower() != ".webm" else "libvpx",
                                      rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"} if path.suffix.lower() != ".webm" else {}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _container_format(path: Path) -> str:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".webm": "webm",
            ".mkv": "matroska", ".avi": "avi"}[path.suffix.lower()]


def _as_uint8_video(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:  # (F, H, W) grayscale
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise VideoError(f"expected frames shaped (F, H, W, 3), got {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.dtype != np.uint8:
        raise VideoError(f"expected uint8 frames, got {frames.dtype}; see to_uint8()")
    return np.ascontiguousarray(frames)


def to_uint8(video: np.ndarray) -> np.ndarray:
    """Map a model's [-1, 1] float video to uint8 pixels."""
    return np.clip(np.round((np.asarray(video, dtype=np.float64) + 1.0) * 127.5), 0, 255).astype(
        np.uint8)


def make_grid(clips: Sequence[np.ndarray], labels: Sequence[str] | None = None,
              ncols: int | None = None, pad: int = 2, label_height: int = 14,
              scale: int = 1) -> np.ndarray:
    """Tile equal-sized clips into one clip, each tile captioned underneath.

    Captions wrap at word boundaries and are never cut: a cell is widened to its longest word
    when the tile is narrower (a 16-pixel tile would show three letters). `scale` enlarges
    every tile by a whole factor (nearest pixel), so small clips stay legible."""
    if not clips:
        raise VideoError("make_grid needs at least one clip")
    clips = [_as_uint8_video(c) for c in clips]
    if any(c.shape != clips[0].shape for c in clips):
        raise VideoError(f"grid clips differ in shape: {sorted({c.shape for c in clips})}")
    if scale > 1:
        clips = [c.repeat(scale, axis=1).repeat(scale, axis=2) for c in clips]
    f, h, w, _ = clips[0].shape
    n = len(clips)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    font = ImageFont.load_default()
    words = [word for lbl in (labels or []) for word in lbl.split()]
    text_w = max([w, *(int(np.ceil(font.getlength(word))) + 2 for word in words)])
    caption_rows = [_wrap(lbl, text_w, font) for lbl in (labels or [""] * n)]
    lines = max((len(r) for r in caption_rows), default=0)
    cap_h = label_height * lines
    cell_h, cell_w = h + cap_h + pad, text_w + pad
    grid = np.full((f, nrows * cell_h + pad, ncols * cell_w + pad, 3), 255, np.uint8)
    for i, clip in enumerate(clips):
        r, c = divmod(i, ncols)
        y, x = pad + r * cell_h, pad + c * cell_w
        left = x + (text_w - w) // 2  # a tile narrower than its caption sits in the middle
        grid[:, y:y + h, left:left + w] = clip
        if cap_h:
            strip = Image.new("RGB", (text_w, cap_h), (255, 255, 255))
            draw = ImageDraw.Draw(strip)
            for j, line in enumerate(caption_rows[i]):
                draw.text((1, j * label_height), line, fill=(0, 0, 0), font=font)
            grid[:, y + h:y + h + cap_h, x:x + text_w] = np.asarray(strip)
    return grid


def grid_scale(height: int, min_tile: int = 64) -> int:
    """The whole factor that makes a grid tile at least `min_tile` pixels high."""
    return max(1, -(-min_tile // max(1, height)))


def write_grid(path: str | Path, clips: Sequence[np.ndarray], labels: Sequence[str] | None = None,
               fps: float = 10.0, ncols: int | None = None, scale: int = 1) -> Path:
    return write_video(path, make_grid(clips, labels, ncols, scale=scale), fps)


def _wrap(text: str, width: int, font: ImageFont.ImageFont) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and font.getlength(trial) > width - 2:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe form of a caption."""
    cleaned = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(p for p in cleaned.split("_") if p)[:max_len] or "empty"


def write_sample_folder(out_dir: str | Path, clips: Sequence[np.ndarray], captions: Sequence[str],
                        fps: float = 10.0) -> list[Path]:
    """One GIF per sample with a same-named .txt caption (the layout `eval` and `train` read),
    plus `grid.gif` of them all (small clips enlarged, whole captions)."""
    out_dir = Path(out_dir)
    paths = []
    for i, (clip, caption) in enumerate(zip(clips, captions, strict=True)):
        path = write_video(out_dir / f"{i:03d}_{slug(caption)}.gif", clip, fps)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(path)
    write_grid(out_dir / "grid.gif", clips, captions, fps,
               scale=grid_scale(np.shape(clips[0])[1]) if len(clips) else 1)
    return paths
