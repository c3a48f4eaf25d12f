"""The Prefect UI in Debian's headless Chromium (./dev test installs it), for the tests that
look at it: tests/ops/test_ui_form.py and tests/integration/test_demo.py.

A hubfleet server requires its credential, and the UI asks for it on a login page that a
headless run cannot fill in. So the browser goes through `LoggedIn`, a loopback proxy that
adds the credential to every API call, as the UI does once an operator has logged in, and
tells the UI (its /ui-settings) to call the API through the proxy.

Two ways to drive the browser: `chromium()`, one run that renders a page in virtual time and
exits (a screenshot or the DOM); `Browser`, one Chromium driven over its DevTools protocol,
which opens pages and waits (in real time, with a timeout) until their text shows what a
test expects, then takes the screenshot."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import requests
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent
#: Where the tests keep their screenshots (git ignores the PNGs there).
RESULTS = REPO / "benchmarks" / "results"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-prefers-reduced-motion",  # no fade-in: the screenshot shows the settled page
]


class LoggedIn:
    """A loopback proxy to a server's UI (`ui_url`) that sends its `credential`
    (`user:password`), as a logged-in UI does. `url` is the proxy's."""

    def __init__(self, ui_url: str, credential: str):
        user, _, password = credential.partition(":")
        upstream, auth = ui_url, (user, password)

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = requests.request(
                    self.command, upstream + self.path, data=body, headers=headers,
                    auth=auth, timeout=60, allow_redirects=False,
                )  # fmt: skip
                content = answer.content
                if self.path.endswith("/ui-settings"):
                    settings: dict[str, Any] = answer.json()
                    settings |= {"api_url": f"{proxy_url}/api", "auth": None}
                    content = json.dumps(settings).encode()
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in (
                        "content-length",
                        "content-encoding",
                        "transfer-encoding",
                        "connection",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                try:
                    self.wfile.write(content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser left the page before this answer came

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        proxy_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = proxy_url
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> LoggedIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run with a new empty profile; it exits by itself. The UI is a
    single-page app: it gets 20 s of virtual time (paused while its API calls are pending)
    to render."""
    profile.mkdir()
    return subprocess.run(
        [CHROMIUM, *FLAGS, "--window-size=1280,1600", "--virtual-time-budget=20000",
         f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


class Browser:
    """One headless Chromium (new empty profile under `profile`) driven over DevTools: one
    tab, `open` a page, `wait_for` its text, `screenshot`. Stopped by PID on `close`."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900):
        profile.mkdir()
        self.log = profile / "chromium.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [CHROMIUM, *FLAGS, f"--window-size={width},{height}",
                 f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            active = profile / "DevToolsActivePort"  # Chromium writes its port there
            deadline = time.monotonic() + 60
            while not (active.is_file() and len(active.read_text().split()) == 2):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Chromium did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.2)
            port = active.read_text().split()[0]
            tabs = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
            tab = next(t for t in tabs if t["type"] == "page")
            self.ws = connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
            self.ids = 0
            # The page exactly `width` x `height`; times shown in UTC, whatever the machine's.
            self.width, self.height = width, height
            self.resize(height)
            self.call("Emulation.setTimezoneOverride", timezoneId="UTC")
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.ids:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def resize(self, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """The page's rendered text (what a reader sees), whitespace collapsed."""
        result = self.call(
            "Runtime.evaluate",
            expression="document.body ? document.body.innerText : ''",
            returnByValue=True,
        )
        return " ".join(str(result["result"].get("value", "")).split())

    def wait_for(self, *texts: str | re.Pattern[str], timeout: float = 90) -> str:
        """Wait until the page shows every one of `texts` (a string, or a pattern to search
        for); its text then. A test fails naming what is missing and showing the page's."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [
                t
                for t in texts
                if not (re.search(t, text) if isinstance(t, re.Pattern) else t in text)
            ]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"not shown after {timeout:.0f} s: {missing}\n{text[:3000]}")
            time.sleep(0.5)

    def screenshot(self, path: Path, height: int | None = None) -> Path:
        """The page as a PNG at `path` (laid out `height` pixels high for it, if given),
        also copied to benchmarks/results/."""
        if height:
            self.resize(height)
            time.sleep(1)  # the app lays itself out again
        shot = self.call("Page.captureScreenshot", format="png")
        if height:
            self.resize(self.height)
        path.write_bytes(base64.b64decode(shot["data"]))
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, RESULTS / path.name)
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        try:
            family = [psutil.Process(self.proc.pid)]
            family += family[0].children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        for proc in family:  # by PID: the browser, its zygotes and renderers
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=15)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=15)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
