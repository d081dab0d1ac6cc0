"""Headless Chromium driven over the DevTools protocol on a pipe: type, click, wait, screenshot.

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, each ending in a NUL)
from its file descriptor 3 and write answers and events to 4, so a test can drive a real page
with the standard library alone (no websocket client, no Selenium or Playwright). The browser is
found and launched the way tests/shared/test_report_html.py does (Debian's `chromium`, headless,
no sandbox, no GPU, device scale 1). HEADLESS_CHROME_LOG=FILE keeps the browser's own messages.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((b for b in CANDIDATES if shutil.which(b)), None)


class BrowserError(RuntimeError):
    pass


_EXEC = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
         "os.execvp(sys.argv[3], sys.argv[3:])")


def _above_four(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Chrome:
    """One headless browser with one page (`with Chrome() as page: page.goto(url) ...`)."""

    def __init__(self, width: int = 1000, height: int = 900, timeout: float = 60.0):
        browser = find_browser()
        if browser is None:
            raise BrowserError("no chromium on PATH")
        self.timeout = timeout
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        # above 4, so that putting one on 3 or 4 cannot overwrite the other first
        to_child, from_child = _above_four(to_child), _above_four(from_child)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--mute-audio", "about:blank"]
        # a tiny Python puts the pipes on the descriptors Chromium reads (3) and writes (4), then
        # becomes Chromium (sh's redirections take only single-digit descriptors)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _EXEC, str(to_child), str(from_child), browser, *args],
            pass_fds=(to_child, from_child), stdout=subprocess.DEVNULL,
            stderr=open(os.environ.get("HEADLESS_CHROME_LOG", os.devnull), "w"))  # noqa: SIM115
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.call("Target.attachToTarget",
                                      {"targetId": target, "flatten": True})["sessionId"]
            self.call("Page.enable")
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise BrowserError("the browser did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError("the browser closed its pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _send(self, method: str, params: dict[str, Any] | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        return self._next_id

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command (to the page's session once attached); return its result."""
        self._send(method, params)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    # ------------------------------------------------------------------ the page

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None,
                 interval: float = 0.05) -> Any:
        """Poll until `expression` is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression}")
            time.sleep(interval)

    def goto(self, url: str) -> float:
        """Load `url`; return the seconds from navigation start to the load event's end."""
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")
        return self.wait_for(
            "(performance.getEntriesByType('navigation')[0] || {}).loadEventEnd") / 1000

    def type_into(self, selector: str, text: str, replace: bool = True) -> None:
        """Focus the element and type `text` as keyboard input."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                      f"e.focus(); if ({json.dumps(replace)}) e.value = ''; return true; }})()")
        self.call("Input.insertText", {"text": text})

    def set_value(self, selector: str, value: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).value = "
                      f"{json.dumps(value)}")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the element's centre."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, "
                            "r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                   "button": "left", "clickCount": 1})

    def screenshot(self) -> bytes:
        """The viewport as PNG bytes."""
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                with contextlib.suppress(OSError):  # its answer may never come: it is closing
                    self._send("Browser.close")
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        finally:
            for fd in (self._read, self._write):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> Chrome:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
