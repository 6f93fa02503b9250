"""A minimal DevTools-protocol client for Debian's headless chromium, over
``--remote-debugging-pipe`` (fd 3 commands in, fd 4 replies out, each message
JSON ended by a NUL byte): no websocket library, no fixed sleeps.

``--dump-dom`` and ``--screenshot`` take the page at its load event, before a
live page's first server-sent event; this client waits for a condition in the
page (a JS expression that becomes true) and then reads the DOM or takes a
screenshot.

As a script: ``python tests/headless.py URL OUT.png [--width 1280 --height 900]``
saves a screenshot once the dashboard shows live data.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Self


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless chromium with one page, driven over the pipe."""

    def __init__(self, browser: str, width: int = 1280, height: int = 900) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="raptors-chromium-")
        child_r, self._to_browser = os.pipe()
        self._from_browser, child_w = os.pipe()
        # The child reads fd 3 and writes fd 4. Its ends are moved above fd 10
        # first, so redirecting onto 3 and 4 cannot overwrite one of them.
        to_browser_r = fcntl.fcntl(child_r, fcntl.F_DUPFD, 10)
        from_browser_w = fcntl.fcntl(child_w, fcntl.F_DUPFD, 10)
        os.close(child_r)
        os.close(child_w)
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", "--remote-debugging-pipe",
            f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}",
            "about:blank",
        ]  # fmt: skip
        # bash (dash takes one-digit fds only) moves the pipe ends to fds 3 and 4 and execs the browser
        # (no preexec_fn: it is unsafe while other threads run).
        redirect = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.proc = subprocess.Popen(
            ["bash", "-c", redirect, browser, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        self.width, self.height = width, height

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        reply: dict[str, Any] = json.loads(raw)
        return reply

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            self.session,
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.call("Page.navigate", self.session, url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            self.session,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 15.0) -> None:
        """Resolve when the JS ``condition`` is true, checked at each animation
        frame inside the page (one round trip, no polling from here)."""
        ms = int(timeout * 1000)
        ok = self.evaluate(
            "new Promise((resolve) => { const t0 = performance.now();"
            f" const check = () => {{ let ok = false; try {{ ok = !!({condition}); }} catch (e) {{}}"
            f" if (ok) resolve(true); else if (performance.now() - t0 > {ms}) resolve(false);"
            " else requestAnimationFrame(check); }; check(); })"
        )
        if not ok:
            raise TimeoutError(f"page condition not met in {timeout} s: {condition}")

    def dom(self) -> str:
        html: str = self.evaluate("document.documentElement.outerHTML")
        return html

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", self.session, format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode())
            os.write(self._to_browser, b"\0")
        except OSError:
            pass  # already gone
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def events_seen(n: int) -> str:
    """A page condition: the dashboard has rendered ``n`` stream events."""
    return f"Number(document.getElementById('status').dataset.events || 0) >= {n}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--events", type=int, default=20, help="stream events to wait for (20)")
    args = p.parse_args()
    browser = find_chromium()
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    with Chromium(browser, args.width, args.height) as page:
        page.open(args.url)
        page.wait_for(events_seen(args.events), timeout=60 + args.events)
        page.screenshot(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
