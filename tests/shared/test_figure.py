"""The README's picture: reference and generated frames of the same sentences, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.app.figure import demo_figure
from shared.data.clips import DataError
from shared.data.video import write_sample_folder, write_video


def test_figure_puts_each_sentence_beside_its_reference(tmp_path: Path):
    demo = tmp_path / "demo"
    gen, ref = (40, 200, 60), (220, 30, 30)
    for label, caption in (("seen", "hello"), ("unseen", "thanks friend")):
        write_sample_folder(demo / "samples" / label, [np.full((8, 16, 16, 3), gen, np.uint8)],
                            [caption])
        path = write_video(demo / "references" / f"{label}.gif",
                           np.full((8, 16, 16, 3), ref, np.uint8), fps=4)
        path.with_suffix(".txt").write_text(caption + "\n")
    out = demo_figure(demo, tmp_path / "fig.png", per_set=1, frames=4, scale=5)
    pixels = np.asarray(Image.open(out).convert("RGB"))
    for colour in (gen, ref):  # 2 sentences x 4 frames of 80 x 80 each
        assert (pixels == colour).all(axis=-1).sum() == 2 * 4 * 80 * 80
    with pytest.raises(DataError, match="t2s-demo"):
        demo_figure(tmp_path / "nothing", tmp_path / "x.png")
