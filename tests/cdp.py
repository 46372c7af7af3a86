"""A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (stdlib only).

Headless Chromium reads NUL-terminated JSON commands on fd 3 and writes replies and events on
fd 4: no port, no websocket, no download."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--remote-debugging-pipe"]


def _high(fd: int) -> int:
    """Move a descriptor above 9, so the child's `exec 3<&R 4>&W` never closes what it just made."""
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Browser:
    def __init__(self, profile_dir: Path, wait_s: float = 180):
        to_chrome_r, self._w = map(_high, os.pipe())
        self._r, from_chrome_w = map(_high, os.pipe())
        cmd = (f"exec 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-; "
               f'exec "$0" "$@"')
        self.proc = subprocess.Popen(["bash", "-c", cmd, CHROMIUM, *FLAGS, f"--user-data-dir={profile_dir}"],
                                     pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL if not os.environ.get("CDP_DEBUG") else None)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.wait_s = wait_s  # generous: a loaded 2-core machine starts Chromium slowly
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self) -> dict:
        deadline = time.monotonic() + self.wait_s
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium sent nothing")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, method: str, session: str) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method and e.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            m = self._read()
            if m.get("method") == method and m.get("sessionId") == session:
                return m
            self.events.append(m)

    def open(self, url: str, width: int, height: int = 900) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=s)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}, session=s)
        self.send("Page.navigate", {"url": url}, session=s)
        self.wait_event("Page.loadEventFired", s)
        return Page(self, s)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


class Page:
    def __init__(self, browser: Browser, session: str):
        self.b, self.s = browser, session

    def eval(self, expression: str):
        r = self.b.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=self.s)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path, max_height: int = 6000) -> Path:
        """The whole page (up to max_height), at the emulated width."""
        width = self.eval("document.documentElement.clientWidth")
        height = min(self.eval("document.documentElement.scrollHeight"), max_height)
        r = self.b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                   "clip": {"x": 0, "y": 0, "width": width, "height": height,
                                                            "scale": 1}}, session=self.s)
        path.write_bytes(base64.b64decode(r["data"]))
        return path
