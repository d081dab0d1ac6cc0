"""`data prepare`, `data stats`, `data preview` through both tools' click groups, and
`t2s-torch train` on the prepared folder as it is."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from shared.data.video import write_video
from t2s_mlx.cli import main as mlx_main
from t2s_torch.cli import main as torch_main

FPS = 10
ROWS = [  # How2Sign columns; line 6 names a video that does not exist
    ("talk_1", "talk_1_0", "0.5", "2.0", "Hello, how are you?"),
    ("talk_1", "talk_1_1", "2.0", "3.5", "I am fine, thanks."),
    ("talk_2", "talk_2_0", "0.0", "1.2", "See you tomorrow."),
    ("talk_2", "talk_2_1", "1.5", "3.0", "Good night."),
    ("talk_9", "talk_9_0", "0.0", "1.0", "Nobody filmed this."),
]


def invoke(tool, *args: str) -> Result:
    result = CliRunner().invoke(tool, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_error_line(result: Result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    for v, name in enumerate(("talk_1", "talk_2")):
        frames = np.full((40, 64, 96, 3), 60, np.uint8)
        for k in range(40):
            frames[k, :, : 2 * (k + 1)] = (230, 200, 40 + 150 * v)
        write_video(root / "videos" / f"{name}.mp4", frames, fps=FPS)
    segments = root / "how2sign.csv"
    with segments.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME",
                         "START_REALIGNED", "END_REALIGNED", "SENTENCE"])
        for i, (video, name, start, end, text) in enumerate(ROWS):
            writer.writerow([video, video, str(i), name, start, end, text])
    return root / "videos", segments


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> tuple[Path, Result]:
    videos, segments = corpus
    out = tmp_path_factory.mktemp("prepared") / "clips"
    result = invoke(torch_main, "data", "prepare", videos, out, "--segments", segments,
                    "--frames", "8", "--workers", "1", "--quiet")
    return out, result


def test_prepare_reports_and_resumes_on_either_tool(prepared, corpus):
    out, result = prepared
    assert result.exit_code == 0, result.output
    assert "4 clips ready (4 written, 0 already done)" in result.stdout
    assert "1 bad rows skipped (missing video 1)" in result.stdout
    assert "how2sign.csv line 6: missing video" in result.stderr
    assert sorted(p.name for p in out.glob("*.gif")) == [f"{r[1]}.gif" for r in ROWS[:4]]
    videos, segments = corpus
    again = invoke(mlx_main, "data", "prepare", videos, out, "--segments", segments,
                   "--frames", "8", "--quiet")
    assert again.exit_code == 0 and "(0 written, 4 already done)" in again.stdout


def test_stats_and_preview_of_the_prepared_folder(prepared, tmp_path):
    out, _ = prepared
    result = invoke(mlx_main, "data", "stats", out, "--json", tmp_path / "stats.json",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"{out}: 4 clips"
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["clips"] == 4 and stats["resolution"] == {"320x180": 4}
    assert stats["frame_counts"] == {"8": 4}
    words = {w.strip(",.?").lower() for row in ROWS[:4] for w in row[4].split()}
    assert stats["vocabulary_size"] == len(words)

    result = invoke(torch_main, "data", "preview", out, tmp_path / "look.png", "-n", "3")
    assert result.exit_code == 0, result.output
    assert "(3 clips)" in result.stdout
    assert Image.open(tmp_path / "look.png").format == "PNG"
    assert Image.open(tmp_path / "look.gif").format == "GIF"


def test_user_errors_are_one_line_naming_file_and_fix(corpus, tmp_path):
    videos, segments = corpus
    strict = invoke(torch_main, "data", "prepare", videos, tmp_path / "o", "--segments",
                    segments, "--strict", "--quiet")
    line = one_error_line(strict)
    assert "how2sign.csv line 6: missing video" in line and "--strict" in line
    columns = invoke(torch_main, "data", "prepare", videos, tmp_path / "o", "--segments",
                     segments, "--columns", "text=GLOSS", "--quiet")
    line = one_error_line(columns)
    assert "how2sign.csv" in line and "'GLOSS'" in line and "--columns" in line
    preview = invoke(torch_main, "data", "preview", videos, tmp_path / "x.png")
    assert "no clips" in one_error_line(preview)


def test_torch_trains_on_the_prepared_folder(prepared, tmp_path):
    out, _ = prepared
    run = tmp_path / "run"
    result = invoke(torch_main, "train", "--data", out, "--preset", "tiny", "--steps", "2",
                    "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert "trained to step 2" in result.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
