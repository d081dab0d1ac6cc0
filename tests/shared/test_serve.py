"""`serve` without a model: the request checks, the vocabulary, the job queue and every route of
the app, over a stand-in sampler that writes solid-colour GIFs (the real servers on both
backends, in a browser: tests/backends/test_serve.py)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.app.serve import (
    InputError,
    JobQueue,
    Limits,
    QueueFull,
    ServeApp,
    Vocabulary,
    check_concurrency,
    is_loopback,
    make_server,
    parse_request,
    words_of,
)
from shared.app.serve_page import render_page
from shared.config import Config, SampleConfig, preset
from shared.data.video import read_video, write_sample_folder

LOCAL = {"Host": "127.0.0.1:7860"}
JSON = {**LOCAL, "Content-Type": "application/json"}


def _config(data_dir: str = "data/none") -> Config:
    config = preset("tiny")
    return replace(config, data=replace(config.data, data_dir=data_dir),
                   sample=SampleConfig(sampler="dpm++", steps=10, guidance=3.0, seed=5))


class FakeSampler:
    """Writes one solid-colour 4-frame 16 x 16 GIF per sample after `steps` short sleeps,
    reporting each step; records the order it ran prompts in."""

    def __init__(self, config: Config, checkpoint: Path, delay: float = 0.0):
        self.config, self.checkpoint, self.delay = config, checkpoint, delay
        self.device_name = "cpu"
        self.ran: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def token_count(self, text: str) -> int:
        return len(text.split()) + 2  # [CLS] ... [SEP]

    def write(self, prompts, out_dir, sample, *, on_step=None, progress=False):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if prompts[0] == "explode":
                raise RuntimeError("the model fell over")
            for i in range(sample.steps):
                time.sleep(self.delay)
                if on_step:
                    on_step(i + 1, sample.steps)
            self.ran.append(prompts[0])
            clip = np.repeat(np.arange(0, 200, 50, dtype=np.uint8), 16 * 16 * 3).reshape(
                4, 16, 16, 3)  # four different frames, so the GIF keeps them all
            return write_sample_folder(out_dir, [clip] * sample.num_samples,
                                       prompts * sample.num_samples)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def captioned_clips(tmp_path: Path) -> Path:
    """Three blank two-frame clips whose captions are the vocabulary (hello friend thank you); not
    the toy-signer `toy_data` of tests/conftest.py."""
    folder = tmp_path / "data"
    folder.mkdir()
    clip = np.zeros((2, 8, 8, 3), np.uint8)
    for i, caption in enumerate(["Hello friend", "thank you", "hello"]):
        write_sample_folder(folder / str(i), [clip], [caption])
    return folder


@pytest.fixture
def app(tmp_path: Path, captioned_clips: Path):
    sampler = FakeSampler(_config(str(captioned_clips)), tmp_path / "run")
    app = ServeApp(sampler, backend="fake", vocabulary=Vocabulary.from_config(sampler.config),
                   limits=Limits(1000), out_dir=None)
    yield app
    app.close()


def _post(app: ServeApp, body, headers=JSON):
    response = app.handle("POST", "/api/generate", headers,
                          body if isinstance(body, bytes) else json.dumps(body).encode())
    return response.status, json.loads(response.body)


def _get(app: ServeApp, path: str):
    response = app.handle("GET", path, LOCAL)
    kind = response.content_type
    return response.status, json.loads(response.body) if kind.startswith(
        "application/json") else response.body


def _wait(app: ServeApp, job_id: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, job = _get(app, f"/api/jobs/{job_id}")
        assert status == 200
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.01)


# ------------------------------------------------------------------ words and vocabulary


def test_words_fold_case_and_strip_punctuation_but_keep_emoji_and_other_scripts():
    assert words_of("Hello, FRIEND!  (thanks)") == ["hello", "friend", "thanks"]
    assert words_of("don't 👋 こんにちは ¿qué?") == ["don't", "👋", "こんにちは", "qué"]
    assert words_of(" ... ") == []


def test_the_vocabulary_is_the_training_captions_words(captioned_clips: Path, tmp_path: Path):
    vocab = Vocabulary.from_config(_config(str(captioned_clips)))
    assert vocab.known and vocab.words == {"hello", "friend", "thank", "you"}
    assert vocab.captions == 3 and str(captioned_clips) in vocab.note
    assert vocab.unknown("Hello, stranger! 👋 hello stranger") == ["stranger", "👋"]
    # relative to the run the checkpoint is in, when not found from here
    run = tmp_path / "run"
    (run / "checkpoints" / "step_1").mkdir(parents=True)
    (run / "clips").symlink_to(captioned_clips)
    beside = Vocabulary.from_config(_config("clips"), run / "checkpoints" / "step_1")
    assert beside.words == vocab.words


def test_a_missing_data_folder_makes_the_vocabulary_unknown(tmp_path: Path):
    vocab = Vocabulary.from_config(_config(str(tmp_path / "gone")))
    assert not vocab.known and "unknown" in vocab.note and "gone" in vocab.note
    assert vocab.unknown("anything at all") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no captioned clips" in Vocabulary.from_config(_config(str(empty))).note


# ------------------------------------------------------------------ request checks


@pytest.mark.parametrize("body, message", [
    ({"text": ""}, "Type a sentence first"),
    ({"text": "   \n\t "}, "Type a sentence first"),
    ({"text": "x" * 10_000}, "10,000 characters long; the limit is 500"),
    ({"text": 5}, "text must be a string"),
    ({"text": "hi", "steps": 0}, "steps must be from 1 to 1000 (the model's noise schedule"),
    ({"text": "hi", "steps": "10000"}, "steps must be from 1 to 1000"),
    ({"text": "hi", "steps": "2.5"}, "steps must be a whole number"),
    ({"text": "hi", "steps": "ten"}, "steps must be a whole number"),
    ({"text": "hi", "seed": -1}, "seed must be from 0 to 4294967295; got -1"),
    ({"text": "hi", "seed": 2**32}, "seed must be from 0 to 4294967295"),
    ({"text": "hi", "seed": 1e300}, "seed must be from 0 to 4294967295"),
    ({"text": "hi", "guidance": "nan"}, "guidance must be from 0 to 50"),
    ({"text": "hi", "guidance": True}, "guidance must be a number"),
    ({"text": "hi", "num_samples": 9}, "samples must be from 1 to 8"),
    ({"text": "hi", "sampler": "euler"}, "sampler must be one of ddpm, ddim, dpm++"),
    (["hi"], "send a JSON object"),
])
def test_bad_requests_are_refused_with_a_message(body, message):
    with pytest.raises(InputError) as caught:
        parse_request(body, _config(), Limits(1000))
    assert message in str(caught.value)


def test_a_request_takes_the_checkpoint_defaults_and_the_fields_it_gives():
    text, sample = parse_request({"text": "  hello \n friend ", "steps": "", "seed": "7",
                                  "guidance": 2, "num_samples": "2"}, _config(), Limits(1000))
    assert text == "hello friend"
    assert (sample.sampler, sample.steps, sample.seed, sample.guidance, sample.num_samples) == \
        ("dpm++", 10, 7, 2.0, 2)
    with pytest.raises(InputError, match=r"from 1 to 20 \(this server's --max-steps\)"):
        parse_request({"text": "hi", "steps": 21}, _config(), Limits(20))


def test_concurrency_above_one_is_for_gpus():
    check_concurrency(1, "cpu")
    check_concurrency(4, "cuda:0")
    with pytest.raises(ValueError, match="only helps on a GPU"):
        check_concurrency(2, "cpu")


def test_loopback_names():
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "example.com", "192.168.1.4", "::"]))


# ------------------------------------------------------------------ the queue


def test_the_queue_runs_jobs_one_at_a_time_in_order_and_survives_a_failure():
    ran, running, most = [], [0], [0]
    lock = threading.Lock()

    def run(job):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1
        if job.text == "bad":
            raise RuntimeError("boom\nsecond line")
        ran.append(job.number)
        return []

    forgotten = []
    jobs = JobQueue(run, workers=1, max_queue=50, keep=5, forget=forgotten.append)
    submitted = [jobs.submit("bad" if i == 3 else f"s{i}", SampleConfig()) for i in range(12)]
    deadline = time.monotonic() + 10
    while any(j.state in ("queued", "running") for j in submitted):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    jobs.close()
    assert ran == [j.number for j in submitted if j.text != "bad"] == sorted(ran)
    assert [j.ran_as for j in submitted] == list(range(1, 13))
    assert most[0] == 1
    assert submitted[3].state == "failed" and submitted[3].error == \
        "RuntimeError: boom second line"
    assert len(jobs.jobs()) == 5 and len(forgotten) == 7  # only the newest 5 are remembered
    assert [j.number for j in forgotten] == list(range(1, 8))


def test_a_full_queue_refuses_more():
    release = threading.Event()
    jobs = JobQueue(lambda job: release.wait(5) and [], workers=1, max_queue=2)
    first = jobs.submit("a", SampleConfig())
    while first.state == "queued":
        time.sleep(0.001)
    jobs.submit("b", SampleConfig())
    jobs.submit("c", SampleConfig())
    with pytest.raises(QueueFull, match="2 requests are already waiting"):
        jobs.submit("d", SampleConfig())
    release.set()
    jobs.close()


# ------------------------------------------------------------------ the app's routes


def test_the_page_embeds_defaults_limits_and_vocabulary(app: ServeApp):
    status, page = _get(app, "/")
    html = page.decode()
    assert status == 200 and html.startswith("<!DOCTYPE html>")
    facts = json.loads(html.split('<script id="info" type="application/json">')[1]
                       .split("</script>")[0])
    assert facts["defaults"]["sampler"] == "dpm++" and facts["defaults"]["seed"] == 5
    assert facts["limits"]["max_steps"] == 1000 and facts["limits"]["max_chars"] == 500
    assert facts["vocabulary"]["known"] and "words" not in facts["vocabulary"]
    assert "Words the model knows: 4" in html and "<p>friend hello thank you</p>" in html
    info = _get(app, "/api/info")[1]
    assert info["vocabulary"]["words"] == ["friend", "hello", "thank", "you"]
    assert info["defaults"] == facts["defaults"] and info["limits"] == facts["limits"]


def test_a_caption_cannot_close_the_embedded_script():
    info = {"defaults": {}, "samplers": ["ddim"], "limits": {"max_steps": 1, "max_guidance": 1,
                                                             "max_seed": 1, "max_samples": 1},
            "vocabulary": {"known": True, "note": "x", "words": ["</script><b>"]},
            "model": {"checkpoint": "</script>", "backend": "b", "device": "cpu", "frames": 1,
                      "size": 8, "fps": 10}}
    page = render_page(info)
    assert page.count("</script>") == 2  # the two real ones
    embedded = page.split('type="application/json">')[1].split("</script>")[0]
    assert json.loads(embedded)["model"]["checkpoint"] == "</script>"
    assert "&lt;/script&gt;&lt;b&gt;" in page  # the word list, escaped


def test_a_request_is_queued_reports_its_steps_and_serves_its_files(app: ServeApp):
    app.sampler.delay = 0.03
    status, job = _post(app, {"text": "Hello stranger 👋", "num_samples": 2, "steps": 4})
    assert status == 202 and job["number"] == 1 and job["state"] in ("queued", "running")
    assert job["warnings"] == ["The model never saw “stranger”, “👋” in its training captions: "
                               "it will sign something, but not those words."]
    seen_steps = set()
    deadline = time.monotonic() + 10
    while (state := _get(app, f"/api/jobs/{job['id']}")[1])["state"] != "done":
        seen_steps.add((state["step"], state["steps"]))
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert {(i, 4) for i in range(1, 4)} & seen_steps  # progress was visible while sampling
    assert len(state["clips"]) == 2 and state["sampling_s"] > 0
    clip = state["clips"][0]
    assert (clip["width"], clip["height"], clip["scale"]) == (16, 16, 12)
    status, gif = _get(app, clip["gif"])
    assert status == 200 and gif[:6] == b"GIF89a"
    status, caption = _get(app, clip["txt"])
    assert status == 200 and caption.decode().strip() == "Hello stranger 👋"
    folder = app.out_dir
    app.close()
    assert not folder.exists()  # the temporary clips go with the server


def test_only_a_jobs_own_files_are_served(app: ServeApp, tmp_path: Path):
    _, job = _post(app, {"text": "hello", "steps": 1})
    _wait(app, job["id"])
    (tmp_path / "secret.txt").write_text("no")
    for path in (f"/files/{job['id']}/..%2F..%2Fsecret.txt", f"/files/{job['id']}/grid.gif",
                 f"/files/{job['id']}/%2Fetc%2Fpasswd", "/files/nope/000_hello.gif",
                 f"/files/{job['id']}/a/b"):
        assert _get(app, path)[0] == 404, path


def test_bad_requests_get_messages_and_the_server_keeps_serving(app: ServeApp):
    assert _post(app, {"text": ""}) == (400, {"error": "Type a sentence first: the text is "
                                                       "empty."})
    assert _post(app, {"text": "hi", "steps": 0})[0] == 400
    assert _post(app, b"{not json")[1]["error"] == "the request is not valid JSON"
    assert _post(app, b"\xff\xfe")[0] == 400
    assert _post(app, {"text": "hi"}, {**LOCAL, "Content-Type": "text/plain"})[0] == 415
    assert _get(app, "/api/jobs/nope")[0] == 404
    assert _get(app, "/nowhere")[0] == 404
    assert app.handle("PUT", "/api/generate", LOCAL).status == 405
    _, job = _post(app, {"text": "explode", "steps": 1})
    failed = _wait(app, job["id"])
    assert failed["state"] == "failed"
    assert failed["error"] == "Generation failed: RuntimeError: the model fell over"
    _, job = _post(app, {"text": "hello", "steps": 1})
    assert _wait(app, job["id"])["state"] == "done"  # the worker carried on


def test_another_host_name_is_refused_on_a_loopback_server(app: ServeApp):
    """A site that points its own name at 127.0.0.1 (DNS rebinding) reaches the socket but
    sends its name as Host: refused."""
    for host in ("evil.example:7860", "192.168.0.9"):
        response = app.handle("GET", "/api/info", {"Host": host})
        assert response.status == 403 and b"localhost" in response.body
    for host in ("localhost:7860", "[::1]:7860", "127.0.0.1"):
        assert app.handle("GET", "/api/info", {"Host": host}).status == 200


def test_an_unexpected_error_is_a_500_not_a_dead_server(app: ServeApp, monkeypatch):
    monkeypatch.setattr(app, "info", lambda: 1 / 0)
    response = app.handle("GET", "/api/info", LOCAL)
    assert response.status == 500 and b"ZeroDivisionError" in response.body
    assert app.handle("GET", "/api/jobs/x", LOCAL).status == 404


def test_kept_clips_stay_in_out(tmp_path: Path, captioned_clips: Path):
    sampler = FakeSampler(_config(str(captioned_clips)), tmp_path / "run")
    app = ServeApp(sampler, backend="fake", vocabulary=Vocabulary(None, "unknown: test"),
                   limits=Limits(1000), out_dir=tmp_path / "kept")
    _, job = _post(app, {"text": "hello there", "steps": 1})
    done = _wait(app, job["id"])
    assert done["warnings"] == []  # an unknown vocabulary warns about nothing
    app.close()
    gifs = list((tmp_path / "kept").rglob("*.gif"))
    assert {g.name for g in gifs} == {"000_hello_there.gif", "grid.gif"}
    assert read_video(next(g for g in gifs if g.name != "grid.gif"))[0].shape == (4, 16, 16, 3)


def test_a_long_text_warns_that_its_end_is_not_read(app: ServeApp):
    _, job = _post(app, {"text": " ".join(["hello"] * 40), "steps": 1})
    assert job["warnings"] == ["The text encoder reads the first 32 tokens; this text has 42, "
                               "so its end is ignored."]



def test_a_busy_port_is_one_clear_error(app: ServeApp):
    first = make_server(app, "127.0.0.1", 0)
    try:
        with pytest.raises(ValueError, match=rf"cannot listen on 127.0.0.1:{first.server_port} "
                                             r".*--port 0 for a free one"):
            make_server(app, "127.0.0.1", first.server_port)
    finally:
        first.server_close()


def test_the_verb_answers_help_and_names_a_missing_checkpoint_in_one_line(tmp_path: Path):
    from click.testing import CliRunner

    from shared.app.backend import Backend
    from shared.app.cli import make_group

    def unused(*args, **kwargs):
        raise AssertionError("not reached: the checkpoint is checked first")

    fake = Backend(name="fake", tool="t2s-fake", trainer=unused, sample_checkpoint=unused,
                   latent_vae=unused, load_i3d=unused, run_checks=unused, load_sampler=unused)
    group = make_group("t2s-fake", "a fake backend", fake)
    help_text = " ".join(CliRunner().invoke(group, ["serve", "--help"]).output.split())
    for needle in ("t2s-fake serve --checkpoint runs/demo/run-toy", "--host", "127.0.0.1",
                   "--port", "0 picks a free one", "--concurrency", "only on a GPU", "--data",
                   "--out", "--max-steps", "--max-queue"):
        assert needle in help_text, needle
    result = CliRunner().invoke(group, ["serve", "--checkpoint", str(tmp_path / "gone")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'gone'}: no such checkpoint (no such file or folder); pass "
        + result.output.split("; pass ", 1)[1].strip()]


def test_concurrency_n_runs_up_to_n_jobs_at_once(tmp_path: Path, captioned_clips: Path):
    """`--concurrency 3` (a GPU): three workers share the queue, never more than three jobs
    at once, and every job finishes."""
    sampler = FakeSampler(_config(str(captioned_clips)), tmp_path / "run", delay=0.01)
    app = ServeApp(sampler, backend="fake", vocabulary=Vocabulary(None, "unknown: test"),
                   limits=Limits(1000), concurrency=3)
    try:
        jobs = [_post(app, {"text": f"s{i}", "steps": 5})[1] for i in range(9)]
        done = [_wait(app, job["id"]) for job in jobs]
    finally:
        app.close()
    assert all(job["state"] == "done" for job in done)
    assert sorted(job["ran_as"] for job in done) == list(range(1, 10))
    assert sampler.most_at_once == 3
