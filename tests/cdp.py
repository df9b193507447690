"""A small client for headless Chromium over the DevTools protocol (websocket-client), for the browser tests.

One Chromium process per test session; each page is a DevTools target with its own websocket.
Only what the tests need: navigate, click and wait for the next page, evaluate JavaScript,
emulate the colour scheme and a screen size, take screenshots, run axe-core.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websocket

ROOT = Path(__file__).resolve().parents[1]
AXE = ROOT / ".ci" / "node" / "node_modules" / "axe-core" / "axe.min.js"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def require(what: str, found: bool, hint: str) -> None:
    """Fail under CI (the package must be there), skip on a developer's machine without it."""
    if found:
        return
    message = f"{what} is missing: {hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    """A DevTools command failed, or the page did not do what was expected in time."""


@dataclass
class Page:
    """One browser tab, driven over its own DevTools websocket."""

    socket: websocket.WebSocket
    events: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 0

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)
        raise CdpError(f"{method}: no answer in {timeout} s")

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        """Return the next event of a kind (one already received counts), consuming it."""
        deadline = time.monotonic() + timeout
        while True:
            for index, message in enumerate(self.events):
                if message.get("method") == event:
                    return self.events.pop(index)
            if time.monotonic() > deadline:
                raise CdpError(f"no {event} in {timeout} s")
            self.socket.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                self.events.append(json.loads(self.socket.recv()))
            except websocket.WebSocketTimeoutException:
                continue
            finally:
                self.socket.settimeout(None)

    def goto(self, url: str) -> None:
        """Open a URL and wait until it has loaded."""
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def click(self, selector: str) -> str:
        """Click the first element matching a CSS selector, wait for the page it opens, return its URL."""
        self.events.clear()
        found = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false; e.click(); return true; }})()"
        )
        if not found:
            raise CdpError(f"nothing matches {selector!r} on {self.url}")
        self.wait_for("Page.loadEventFired")
        return self.url

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate JavaScript (awaiting a promise) and return its value as JSON."""
        result = self.send(
            "Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    @property
    def url(self) -> str:
        return self.evaluate("location.href")

    def color_scheme(self, scheme: str) -> None:
        """Emulate prefers-color-scheme: 'light' or 'dark'."""
        self.send("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": scheme}])

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)

    def screenshot(self, path: Path, full_page: bool = True) -> None:
        """Save a PNG of the page (the whole page, not only the viewport, by default)."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            width, height = self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))

    def axe(self, source: str) -> list[dict[str, Any]]:
        """Run axe-core on the page (every WCAG 2.2 A/AA rule and best practice, target size included)."""
        if not self.evaluate("typeof window.axe !== 'undefined'"):
            self.evaluate(source + "\n;true")
        options = {"resultTypes": ["violations"], "rules": {"target-size": {"enabled": True}}}
        results = self.evaluate(f"axe.run(document, {json.dumps(options)})", timeout=60)
        return [
            {
                "id": v["id"],
                "impact": v["impact"],
                "help": v["help"],
                "nodes": [n["target"] for n in v["nodes"]][:5],
                "summary": v["nodes"][0].get("failureSummary", "") if v["nodes"] else "",
            }
            for v in results["violations"]
        ]

    def close(self) -> None:
        self.socket.close()


@dataclass
class Browser:
    """A headless Chromium process with its DevTools endpoint on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def launch(cls, profile: Path) -> Browser:
        command = [chromium_path() or "chromium", *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = profile / "DevToolsActivePort"  # Chromium writes its port here when port 0 is asked for
        deadline = time.monotonic() + 30
        while not (active.is_file() and active.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise CdpError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        return cls(process, int(active.read_text().split()[0]))

    def new_page(self) -> Page:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            target = json.load(response)
        page = Page(websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30, suppress_origin=True))
        page.send("Page.enable")
        page.send("Runtime.enable")
        return page

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
