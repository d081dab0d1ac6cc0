"""`t2s-torch serve` and `t2s-mlx serve`: the real console script on a free local port, over a
tiny checkpoint of the backend's own, driven by headless Chromium (type a sentence, press the
button, the video appears; bad input gets a message) and by plain HTTP (twenty requests at once
all finish, in the order they were sent, in bounded memory; a checkpoint deleted while serving
changes nothing).

T2S_WRITE_SCREENSHOT=1 saves the browser test's page after generation as docs/serve.png, and
T2S_SERVE_CHECKPOINT=RUN serves that run instead of the tiny one (for a screenshot of a trained
model: `T2S_SERVE_CHECKPOINT=runs/demo/run-toy T2S_WRITE_SCREENSHOT=1 pytest
tests/backends/test_serve.py -k "browser and torch"`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from headless_chrome import Chrome, find_browser

from shared.config import SampleConfig, preset
from shared.data.video import write_sample_folder

ROOT = Path(__file__).resolve().parents[2]
VOCABULARY = ("hello", "friend", "thank", "you")


@pytest.fixture(scope="module")
def checkpoint(backend, tmp_path_factory) -> Path:
    """A tiny UNet (4 frames of 8 x 8) saved by the backend itself, its data.data_dir a folder
    of three captioned clips (the vocabulary: hello friend thank you)."""
    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    clip = np.zeros((2, 8, 8, 3), np.uint8)
    for i, caption in enumerate(["hello friend", "thank you", "hello"]):
        write_sample_folder(data / str(i), [clip], [caption])
    config = preset("tiny")
    config = replace(config, data=replace(config.data, data_dir=str(data), num_frames=4,
                                          image_size=8),
                     sample=SampleConfig(sampler="dpm++", steps=4, guidance=3.0, seed=1))
    model = backend.module("unet").UNet3D(config.model)
    backend.module("checkpoint").save_checkpoint(root / "run", 1, config, model, ema=model)
    return root / "run"


class Server:
    """A `serve` process: its URL, pid and everything it printed."""

    def __init__(self, tool: str, checkpoint: str, *args: str, cwd: Path | None = None):
        self.process = subprocess.Popen(
            [tool, "serve", "--checkpoint", checkpoint, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
        self.lines: list[str] = []
        self._url = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._url.wait(180) or self.process.poll() is not None:
            self.stop()
            raise AssertionError("serve did not start:\n" + "".join(self.lines))
        self.url = re.search(r"serving at (http://\S+/)", "".join(self.lines)).group(1)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if "serving at http://" in line:
                self._url.set()

    def memory_kb(self, field: str) -> int:
        """VmRSS (now) or VmHWM (peak so far) of the server process, in kB (0 where there is
        no /proc to read it from: macOS)."""
        path = Path(f"/proc/{self.process.pid}/status")
        if not path.exists():
            return 0
        status = path.read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, flags=re.M).group(1))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def _request(url: str, body: bytes | None = None, kind: str = "application/json"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _generate(server: Server, **fields) -> tuple[int, dict]:
    status, body = _request(server.url + "api/generate", json.dumps(fields).encode())
    return status, json.loads(body)


def _finished(server: Server, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = _request(f"{server.url}api/jobs/{job_id}")
        job = json.loads(body)
        assert status == 200, job
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(backend, checkpoint, tmp_path_factory):
    """`t2s-<backend> serve` on a copy of the checkpoint (the last test deletes it), given as
    runs/demo/run-toy, as the README's command does."""
    root = tmp_path_factory.mktemp("served")
    run = root / "runs" / "demo" / "run-toy"
    target = os.environ.get("T2S_SERVE_CHECKPOINT")
    shutil.copytree(Path(target) if target else checkpoint, run)
    served = Server(backend.tool, "runs/demo/run-toy", "--max-steps", "50", cwd=root)
    served.run = run
    yield served
    assert served.stop() == 0
    assert served.lines[-1].strip() == "stopped", "".join(served.lines)


def test_twenty_requests_at_once_all_finish_in_order_in_bounded_memory(server):
    """On the fresh server (the first test of the module), one request first: its peak memory
    above the idle server's is what a request costs, one-time set-up included. Then twenty at
    once: they queue and run one by one in the order they arrived (never two running), so
    the peak grows by no more than 1.5x what one request needed."""
    idle = server.memory_kb("VmRSS")
    status, first = _generate(server, text="hello", num_samples=2, steps=2)
    assert status == 202 and first["number"] == 1, "needs a server that has not generated yet"
    assert _finished(server, first["id"])["state"] == "done"
    one = server.memory_kb("VmHWM") - idle

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda i: _generate(server, text=f"hello friend {i}",
                                                    num_samples=2, steps=2, seed=i), range(20)))
    assert all(status == 202 for status, _ in answers), answers
    queues = []
    while not queues or queues[-1]["waiting"] + queues[-1]["running"]:
        queues.append(json.loads(_request(server.url + "api/info")[1])["queue"])
        time.sleep(0.02)
    assert max(q["running"] for q in queues) == 1 and max(q["waiting"] for q in queues) >= 3
    jobs = [_finished(server, job["id"]) for _, job in answers]
    assert len({job["id"] for job in jobs}) == 20
    assert all(job["state"] == "done" and len(job["clips"]) == 2 for job in jobs), jobs
    by_arrival = sorted(jobs, key=lambda job: job["number"])
    assert [job["ran_as"] for job in by_arrival] == sorted(job["ran_as"] for job in jobs)
    after = first["number"] + 1  # numbered in arrival order, none skipped
    assert [job["number"] for job in by_arrival] == list(range(after, after + 20))
    for job in jobs:  # none lost: each answers with its own sentence and seed
        assert job["text"] == f"hello friend {job['settings']['seed']}"
        status, gif = _request(server.url + job["clips"][0]["gif"].lstrip("/"))
        assert status == 200 and gif[:6] == b"GIF89a"
    twenty = server.memory_kb("VmHWM") - idle
    print(f"peak memory over the idle server: one request {one} kB, twenty queued {twenty} kB")
    assert twenty <= 1.5 * one or not Path("/proc").is_dir(), (
        f"peak grew {twenty} kB over twenty queued requests against {one} kB for one")
    assert _request(server.url + "api/info")[0] == 200  # still up


@pytest.mark.skipif(find_browser() is None, reason="needs chromium (.ci/run installs it)")
def test_a_browser_types_a_sentence_and_sees_it_signed(server):
    with Chrome(width=1000, height=760) as page:
        load_s = page.goto(server.url)
        assert load_s < 2.0
        assert page.evaluate("document.getElementById('steps').value") == str(
            json.loads(_request(server.url + "api/info")[1])["defaults"]["steps"])
        page.type_into("#text", "hello friend")
        page.click("#go")
        shown = page.wait_for("(() => { const c = document.querySelector('.card.done'); "
                              "return c && c.dataset.shownS; })()", timeout=120)
        image = page.evaluate(
            "(() => { const i = document.querySelector('.card.done img.clip'); "
            "const s = getComputedStyle(i); return {complete: i.complete, natural: "
            "[i.naturalWidth, i.naturalHeight], shown: [i.width, i.height], rendering: "
            "s.imageRendering, src: i.src}; })()")
        card = page.evaluate("document.querySelector('.card.done').innerText")
        if os.environ.get("T2S_WRITE_SCREENSHOT") == "1":
            (ROOT / "docs" / "serve.png").write_bytes(page.screenshot())
        # the video is drawn, enlarged pixel-exactly by a whole factor
        assert image["complete"] and image["natural"][0] > 0
        scale = image["shown"][0] / image["natural"][0]
        assert scale == int(scale) >= 2 and image["shown"][1] == scale * image["natural"][1]
        assert image["rendering"] == "pixelated"
        assert "hello friend" in card and "steps" in card and "after pressing the button" in card
        assert float(shown) < 60
        status, gif = _request(image["src"])
        assert status == 200 and gif[:6] == b"GIF89a"
        links = page.evaluate("[...document.querySelectorAll('.card.done .downloads a')]"
                              ".map(a => [a.textContent, a.getAttribute('download')])")
        assert [name for name, _ in links] == ["download GIF", "caption .txt"]
        assert links[0][1].endswith(".gif") and links[1][1].endswith(".txt")

        # bad input: a message on the page, and the page goes on working
        message = "document.getElementById('message')"
        for text, expected in [("", "Type a sentence first"),
                               ("x" * 10_000, "10,000 characters long; the limit is 500")]:
            page.type_into("#text", text)
            page.click("#go")
            page.wait_for(f"!{message}.hidden && {message}.textContent.includes("
                          f"{json.dumps(expected)})")
            assert page.evaluate(f"{message}.className") == "error"
        page.type_into("#text", "hello")
        for field, value, expected in [("steps", "0", "steps must be from 1 to 50"),
                                       ("steps", "10000", "steps must be from 1 to 50"),
                                       ("seed", "-5", "seed must be from 0 to 4294967295")]:
            page.set_value(f"#{field}", value)
            page.click("#go")
            page.wait_for(f"{message}.textContent.includes({json.dumps(expected)})")
            page.set_value(f"#{field}", "")  # empty: the checkpoint's default
        page.type_into("#text", "hello 👋 こんにちは")
        page.click("#go")
        page.wait_for(f"{message}.className === 'warning' && {message}.textContent"
                      ".includes('never saw “👋”, “こんにちは”')")
        page.wait_for("document.querySelectorAll('.card.done img.clip').length === 2",
                      timeout=120)
        assert page.evaluate("document.querySelectorAll('.card').length") == 2


def test_bad_requests_over_http_get_messages_and_the_server_stays_up(server):
    cases = [({"text": ""}, "Type a sentence first"),
             ({"text": "x" * 10_000}, "the limit is 500"),
             ({"text": "hi", "steps": 10_000}, "steps must be from 1 to 50"),
             ({"text": "hi", "seed": 2**40}, "seed must be from 0 to 4294967295")]
    for fields, expected in cases:
        status, answer = _generate(server, **fields)
        assert status == 400 and expected in answer["error"], answer
    status, body = _request(server.url + "api/generate", b"{" + b" " * 70_000 + b"}")
    assert status == 413 and b"too large" in body
    status, answer = _generate(server, text="👋")
    assert status == 202 and "never saw “👋”" in answer["warnings"][0]
    assert _finished(server, answer["id"])["state"] == "done"


def test_a_checkpoint_deleted_while_serving_changes_nothing(server):
    """The model was loaded once at start: with its files gone, generation goes on."""
    shutil.rmtree(server.run)
    status, job = _generate(server, text="thank you")
    assert status == 202 and _finished(server, job["id"])["state"] == "done"
    assert sum("loaded " in line for line in server.lines) == 1
