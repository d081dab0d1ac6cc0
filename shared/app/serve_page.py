"""The `serve` page: one self-contained HTML document (style and script inline, the server's
facts embedded as JSON), so it loads in a single request and needs nothing from the network.

The script posts the form as JSON to /api/generate, then polls /api/jobs/ID every `poll_ms`,
showing the place in the queue and "step i of n" while a job waits and samples, and finally
the clips: GIFs enlarged by a whole factor with `image-rendering: pixelated` (one square per
model pixel, as on the results page of `shared.app.report_html`), each with its caption,
settings, the time it took and links to download the GIF and its .txt caption. Every message
from the server (bad input, a full queue, a failed job, unknown words) is shown on the page;
all text from the user or the server is inserted as text, never as HTML.
"""

from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 980px;
       padding: 0 1em; color: #111; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
.model { color: #555; font-size: .85em; margin: 0 0 1em; overflow-wrap: anywhere; }
textarea { width: 100%; box-sizing: border-box; font: inherit; font-size: 1.15em;
           padding: .4em; border: 1px solid #aaa; border-radius: 4px; resize: vertical; }
.row { display: flex; flex-wrap: wrap; gap: .6em 1.2em; align-items: end; margin: .5em 0; }
.row label { display: flex; flex-direction: column; font-size: .8em; color: #444; }
.row input, .row select { font: inherit; font-size: 1.05em; width: 7em; padding: .15em; }
#count { font-size: .8em; color: #555; margin-left: auto; } #count.over { color: #b00; }
button { font: inherit; font-size: 1.05em; padding: .4em 1.4em; border-radius: 4px;
         border: 1px solid #246; background: #2a5db0; color: #fff; cursor: pointer; }
#message { margin: .8em 0; padding: .5em .8em; border-radius: 4px; white-space: pre-wrap; }
#message.error { background: #fde8e8; border: 1px solid #c44; color: #700; }
#message.warning { background: #fff5d6; border: 1px solid #d9a400; color: #5a4300; }
#results { display: flex; flex-direction: column; gap: 14px; margin-top: 1em; }
.card { background: #fff; border: 2px solid #ddd; border-radius: 6px; padding: 10px; }
.card.failed { border-color: #c44; }
.clips { display: flex; flex-wrap: wrap; gap: 10px; }
.clips figure { margin: 0; }
img.clip { image-rendering: crisp-edges; image-rendering: pixelated; display: block;
           background: #eee; }
.caption { font-weight: 600; font-size: 1.1em; margin: .3em 0 .1em; overflow-wrap: anywhere; }
.facts, .progress-text { font-size: .85em; color: #444; }
.card .warning { font-size: .85em; color: #5a4300; }
.downloads a { font-size: .8em; margin-right: .8em; }
progress { width: 240px; vertical-align: middle; }
details { margin-top: 1.5em; font-size: .9em; } details p { overflow-wrap: anywhere; }
"""

_SCRIPT = r"""
"use strict";
const info = JSON.parse(document.getElementById("info").textContent);
const $ = (id) => document.getElementById(id);
const FIELDS = ["sampler", "steps", "guidance", "seed", "num_samples"];
for (const name of FIELDS) $(name).value = info.defaults[name];
const text = $("text");

function updateCount() {
  const n = text.value.trim().length;
  $("count").textContent = `${n} / ${info.limits.max_chars} characters`;
  $("count").classList.toggle("over", n > info.limits.max_chars);
}
text.addEventListener("input", updateCount);
text.addEventListener("keydown", (e) => {
  // Enter sends (Shift+Enter: a new line); not while an input method is composing (Japanese, ...)
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("form").requestSubmit();
  }
});
updateCount();

function say(kind, lines) {
  const box = $("message");
  box.className = kind;
  box.textContent = lines.join("\n");
  box.hidden = lines.length === 0;
}

function node(tag, cls, content) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (content !== undefined) el.textContent = content;
  return el;
}

function settingsLine(s) {
  const samples = s.num_samples === 1 ? "1 sample" : `${s.num_samples} samples`;
  return `${s.sampler}, ${s.steps} steps, guidance ${s.guidance}, seed ${s.seed}, ${samples}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function poll(job, card, pressed) {
  const bar = card.querySelector("progress");
  const line = card.querySelector(".progress-text");
  let failures = 0;
  for (;;) {
    let status;
    try {
      const r = await fetch(`/api/jobs/${job.id}`, {cache: "no-store"});
      status = await r.json();
      if (!r.ok) throw new Error(status.error || `HTTP ${r.status}`);
      failures = 0;
    } catch (err) {
      if (++failures >= 20) {
        card.classList.add("failed");
        line.textContent = `Lost touch with the server: ${err.message}`;
        say("error", [`Lost touch with the server: ${err.message}`]);
        return;
      }
      await sleep(500);
      continue;
    }
    if (status.state === "queued") {
      line.textContent = status.ahead ? `waiting: ${status.ahead} ahead in the queue` :
        "waiting to start";
      bar.removeAttribute("value");
    } else if (status.state === "running") {
      line.textContent = `sampling: step ${status.step} of ${status.steps}`;
      bar.max = status.steps; bar.value = status.step;
    } else if (status.state === "failed") {
      card.classList.add("failed");
      line.textContent = status.error;
      bar.remove();
      say("error", [status.error]);
      return;
    } else if (status.state === "done") {
      await show(status, card, pressed);
      return;
    }
    await sleep(info.poll_ms);
  }
}

async function show(status, card, pressed) {
  const clips = node("div", "clips");
  const loads = [];
  for (const clip of status.clips) {
    const fig = node("figure");
    const img = node("img", "clip");
    img.width = clip.width * clip.scale; img.height = clip.height * clip.scale;
    img.alt = clip.caption; img.title = `${clip.name}: ${clip.width} x ${clip.height}, ` +
      `shown ${clip.scale}x`;
    loads.push(new Promise((resolve) => { img.onload = img.onerror = resolve; }));
    img.src = clip.gif;
    fig.append(img);
    const links = node("div", "downloads");
    const gif = node("a", "", "download GIF"); gif.href = clip.gif; gif.download = clip.name;
    const txt = node("a", "", "caption .txt"); txt.href = clip.txt;
    txt.download = clip.name.replace(/\.gif$/, ".txt");
    links.append(gif, txt);
    fig.append(links);
    clips.append(fig);
  }
  card.querySelector(".pending").replaceWith(clips);
  await Promise.all(loads);
  const shown = (performance.now() - pressed) / 1000;
  card.dataset.shownS = shown.toFixed(3);
  card.classList.add("done");
  card.querySelector(".timing").textContent =
    `on the page ${shown.toFixed(2)} s after pressing the button: sampling ` +
    `${status.sampling_s.toFixed(2)} s` +
    (status.queued_s >= 0.05 ? `, ${status.queued_s.toFixed(2)} s waiting in the queue` : "");
}

let latest = 0;  // only the newest press may set the message: answers can arrive out of order
$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const pressed = performance.now();
  const mine = ++latest;
  say("", []);
  const body = {text: text.value};
  for (const name of FIELDS) body[name] = $(name).value;
  let r, data;
  try {
    r = await fetch("/api/generate", {method: "POST", body: JSON.stringify(body),
                                      headers: {"Content-Type": "application/json"}});
    data = await r.json();
  } catch (err) {
    if (mine === latest) {
      say("error", [`The server did not answer (${err.message}); is it still running?`]);
    }
    return;
  }
  if (!r.ok) {
    if (mine === latest) say("error", [data.error || `HTTP ${r.status}`]);
    return;
  }
  if (mine === latest) say("warning", data.warnings);
  const card = node("div", "card");
  card.dataset.number = data.number;
  card.append(node("p", "caption", data.text));
  const pending = node("div", "pending");
  pending.append(node("progress"), " ", node("span", "progress-text", "sent"));
  card.append(pending);
  card.append(node("p", "facts", settingsLine(data.settings)));
  for (const w of data.warnings) card.append(node("p", "warning", w));
  card.append(node("p", "facts timing"));
  $("results").prepend(card);
  poll(data, card, pressed);
});
"""


def _vocabulary_html(vocab: dict[str, Any]) -> str:
    esc = html.escape
    if not vocab["known"]:
        return f'<p id="vocab-note">Vocabulary {esc(vocab["note"])}.</p>'
    words = vocab["words"]
    shown = " ".join(words[:400]) + (" …" if len(words) > 400 else "")
    return (f'<details id="vocab"><summary>Words the model knows: {len(words)}, from '
            f'{esc(vocab["note"])}</summary><p>{esc(shown)}</p></details>')


def render_page(info: dict[str, Any]) -> str:
    """The page for `ServeApp.info()`'s facts (defaults, limits, vocabulary, model)."""
    esc = html.escape
    model, limits = info["model"], info["limits"]
    options = "".join(f'<option value="{esc(s)}">{esc(s)}</option>' for s in info["samplers"])
    # the script needs no word list (a real corpus has thousands; the page lists 400 of them)
    vocab = {k: v for k, v in info["vocabulary"].items() if k != "words"}
    # "<" only occurs inside JSON strings, where \u003c means the same and cannot end the tag
    facts = json.dumps({**info, "vocabulary": vocab}, ensure_ascii=False).replace("<", "\\u003c")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>text2sign: type a sentence, watch it signed</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Type a sentence, watch it signed</h1>",
        f'<p class="model">{esc(model["checkpoint"])} · {esc(model["backend"])} on '
        f'{esc(model["device"])} · {model["frames"]} frames of {model["size"]} × '
        f'{model["size"]} at {model["fps"]} fps</p>',
        '<form id="form" novalidate>',  # the server checks every field and says what is wrong
        '<label for="text" hidden>Sentence</label>',
        '<textarea id="text" rows="2" placeholder="hello friend" autofocus></textarea>',
        '<div class="row">',
        f'<label>sampler<select id="sampler">{options}</select></label>',
        f'<label>steps<input id="steps" type="number" min="1" max="{limits["max_steps"]}">'
        "</label>",
        f'<label>guidance<input id="guidance" type="number" step="0.5" min="0" '
        f'max="{limits["max_guidance"]:g}"></label>',
        f'<label>seed<input id="seed" type="number" min="0" max="{limits["max_seed"]}">'
        "</label>",
        f'<label>samples<input id="num_samples" type="number" min="1" '
        f'max="{limits["max_samples"]}"></label>',
        '<button id="go" type="submit">Sign it</button>',
        '<span id="count"></span>',
        "</div></form>",
        '<div id="message" role="alert" hidden></div>',
        '<div id="results"></div>',
        _vocabulary_html(info["vocabulary"]),
        f'<script id="info" type="application/json">{facts}</script>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
        ""])
