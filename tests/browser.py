"""A headless Chromium driven over the DevTools protocol, for tests that look at the built site.

Chromium talks DevTools over a pair of pipes (``--remote-debugging-pipe``: it reads commands on
fd 3 and writes replies and events on fd 4, each a JSON object followed by a NUL byte), so no
WebSocket client and no open port are needed. Pages come from a loopback HTTP server serving the
built site; the browser runs with a fresh profile and every background fetch turned off, so
nothing leaves the machine.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)
# Not a limit on how fast a page must render: only a guard so that a browser which never answers
# fails the test with a message instead of hanging the suite.
HANG_GUARD_S = 600.0


def find_chromium() -> str | None:
    """The first Chromium-family binary on PATH (``PALI_CHROMIUM`` names one explicitly)."""
    named = os.environ.get("PALI_CHROMIUM")
    if named:
        return shutil.which(named)
    return next((path for path in map(shutil.which, BINARIES) if path), None)


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class PageReport:
    """What one page load produced: errors seen by the browser, images, diagrams."""

    url: str
    errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)  # URLs outside the local server it asked for
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    diagrams: int = 0
    unrendered_diagrams: int = 0
    diagram_svgs: list[str] = field(default_factory=list)


class Chromium:
    """One headless browser; ``load`` opens a page in a new tab and reports on it."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # A small trampoline moves the pipe ends to the fds the protocol expects, then becomes
        # Chromium (a shell cannot: POSIX sh only redirects single-digit fds).
        trampoline = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); " \
                     "os.execv(sys.argv[3], sys.argv[3:])"
        self.process = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(to_browser_r), str(from_browser_w), binary, *FLAGS,
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        self._urls: dict[str, str] = {}  # request id -> URL, to name a failed request

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)

    # -- the protocol ------------------------------------------------------------------------

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _drain(self, session: str) -> list[dict]:
        mine = [e for e in self._events if e.get("sessionId") == session]
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return mine

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    # -- one page ----------------------------------------------------------------------------

    def load(self, url: str) -> PageReport:
        """Open ``url``, wait until it has loaded and its Mermaid diagrams are drawn, report."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session)
        report = PageReport(url)
        self.send("Page.navigate", session, url=url)
        start = time.monotonic()
        loaded = False
        while time.monotonic() - start < HANG_GUARD_S:
            # Events are read while a command waits for its reply: this call also collects them.
            pending = self.evaluate(session, "document.querySelectorAll('pre.mermaid').length")
            events = self._drain(session)
            self._collect_errors(events, report)
            loaded = loaded or any(e.get("method") == "Page.loadEventFired" for e in events)
            # Material replaces each <pre class="mermaid"> by a <div class="mermaid"> once drawn.
            if loaded and (pending == 0 or report.errors):
                break
            time.sleep(0.1)
        else:
            report.errors.append(f"the page did not finish loading and drawing within {HANG_GUARD_S:.0f} s")
        time.sleep(0.2)  # let late console messages arrive
        self.evaluate(session, "1")
        self._collect_errors(self._drain(session), report)
        self._inspect(session, report)
        self.send("Target.closeTarget", targetId=target)
        return report

    def _collect_errors(self, events: list[dict], report: PageReport) -> None:
        local = report.url.split("/", 3)[:3]
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                self._urls[params["requestId"]] = url
                if url.split("/", 3)[:3] != local and not url.startswith(("data:", "blob:", "about:")):
                    report.external.append(url)
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                report.errors.append(f"uncaught exception: {text}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                report.errors.append(f"console.{params['type']}: {text}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                if entry.get("url") not in report.external:  # the request's own failure says enough
                    report.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                url = self._urls.get(params["requestId"], "?")
                if url not in report.external:
                    report.errors.append(f"request failed: {params.get('errorText')} ({url})")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                response = params["response"]
                report.errors.append(f"HTTP {response['status']} for {response['url']}")

    def _inspect(self, session: str, report: PageReport) -> None:
        images = self.evaluate(session, "Array.from(document.images, i => [i.currentSrc || i.src, "
                                        "i.complete && i.naturalWidth > 0])")
        report.images = len(images)
        report.broken_images = [src for src, ok in images if not ok]
        report.unrendered_diagrams = self.evaluate(session, "document.querySelectorAll('pre.mermaid').length")
        # The drawn SVG lives in a closed shadow root: only the DOM domain (pierce) can see it.
        root = self.send("DOM.getDocument", session, depth=-1, pierce=True)["root"]
        for host in _walk(root):
            if host.get("localName") == "div" and "mermaid" in _classes(host):
                report.diagrams += 1
                svgs = [n for shadow in host.get("shadowRoots", []) for n in _walk(shadow)
                        if n.get("localName") == "svg"]
                if svgs:
                    html = self.send("DOM.getOuterHTML", session, backendNodeId=svgs[0]["backendNodeId"])
                    report.diagram_svgs.append(html["outerHTML"])
                else:
                    report.unrendered_diagrams += 1


def _walk(node: dict) -> Iterator[dict]:
    yield node
    for child in node.get("children", []) + node.get("shadowRoots", []):
        yield from _walk(child)


def _classes(node: dict) -> list[str]:
    attributes = node.get("attributes", [])
    pairs = dict(zip(attributes[::2], attributes[1::2]))
    return pairs.get("class", "").split()
