"""A framework-free TensorBoard logger that both backends share.

Built on the `tensorboard` package's own event-file writer and protos rather than
`torch.utils.tensorboard`, so the MLX side never imports torch and videos need no moviepy: a
clip goes in as an animated GIF image summary, which TensorBoard plays in its Images tab.
`tensorboard` is imported only when an enabled logger is made, so importing this module is cheap.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from shared.data.video import make_grid, write_video


def gif_bytes(frames: np.ndarray, fps: float = 8.0) -> bytes:
    """Encode uint8 (F, H, W, 3) frames as GIF bytes with shared.data.video's writer, so the palette
    and timing match the GIFs written next to checkpoints."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "clip.gif", frames, fps)
        return path.read_bytes()


class TensorBoardLogger:
    """Writes scalars, text, images, videos and histograms to one event file in `log_dir`.

    With `enabled=False` (e.g. on ranks other than 0) nothing is imported or written and every
    method returns at once, so callers need no `if rank == 0` around each call.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, flush_secs: float = 10.0):
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer: Any = None
        if not enabled:
            return
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as e:
            raise ImportError(
                "TensorBoard logging needs the `tensorboard` package: pip install tensorboard "
                "(or pass enabled=False)") from e
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self._writer = EventFileWriter(str(self.log_dir), flush_secs=flush_secs)

    def _write(self, step: int, *values: Any) -> None:
        if self._writer is None:
            raise RuntimeError(f"TensorBoardLogger({self.log_dir}) is closed")
        summary = self._summary_pb2.Summary(value=list(values))
        self._writer.add_event(
            self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar; `value` may be a Python, numpy or 0-d framework number."""
        if self.enabled:
            self._write(step, self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Several scalars at one step, one tag each (e.g. {"train/loss": .., "train/lr": ..})."""
        if self.enabled and values:
            value = self._summary_pb2.Summary.Value
            self._write(step, *(value(tag=t, simple_value=float(v)) for t, v in values.items()))

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """Markdown for the Text tab: a rank-0 string tensor tagged for the text plugin (rank 0
        renders as plain markdown; rank 1 would be drawn as a table)."""
        if not self.enabled:
            return
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        pb = self._summary_pb2
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                        string_val=[markdown.encode("utf-8")])
        meta = pb.SummaryMetadata(plugin_data=pb.SummaryMetadata.PluginData(plugin_name="text"))
        self._write(step, pb.Summary.Value(tag=tag, metadata=meta, tensor=tensor))

    def log_config(self, config: Mapping[str, Any], tag: str = "config", step: int = 0) -> None:
        """The run's configuration as a JSON code block, so a run can be told from its log."""
        dump = json.dumps(config, indent=2, sort_keys=True, default=str)
        self.text(tag, f"```json\n{dump}\n```", step)

    def _image_value(self, tag: str, encoded: bytes, height: int, width: int) -> Any:
        image = self._summary_pb2.Summary.Image(height=height, width=width, colorspace=3,
                                                encoded_image_string=encoded)
        return self._summary_pb2.Summary.Value(tag=tag, image=image)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A uint8 (H, W, 3) image, stored as PNG."""
        if not self.enabled:
            return
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        self._write(step, self._image_value(tag, buf.getvalue(), *image.shape[:2]))

    def video(self, tag: str, frames: np.ndarray, step: int, fps: float = 8.0) -> None:
        """A uint8 clip (F, H, W, 3), or a batch (N, F, H, W, 3) tiled into one grid clip,
        stored as an animated GIF image (TensorBoard plays GIFs; no moviepy needed)."""
        if not self.enabled:
            return
        frames = np.asarray(frames)
        if frames.ndim == 5:
            frames = make_grid(list(frames))
        data = gif_bytes(frames, fps)
        self._write(step, self._image_value(tag, data, *frames.shape[1:3]))

    def histogram(self, tag: str, values: np.ndarray, step: int, bins: int = 64) -> None:
        """A histogram of finite `values` (weights, gradient norms); NaN/inf are dropped, since
        one of them would make every bucket edge undefined. An empty input logs nothing."""
        if not self.enabled:
            return
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        counts, edges = np.histogram(x, bins=bins)
        histo = self._summary_pb2.HistogramProto(
            min=float(x.min()), max=float(x.max()), num=float(x.size), sum=float(x.sum()),
            sum_squares=float(np.dot(x, x)), bucket_limit=edges[1:].tolist(),
            bucket=counts.astype(np.float64).tolist())
        self._write(step, self._summary_pb2.Summary.Value(tag=tag, histo=histo))

    def flush(self) -> None:
        """Push pending events to disk (they also go every `flush_secs`)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
