"""A real embedded config-server and a headless Chromium for the browser tests.

:class:`EmbeddedServer` runs ``aami-server serve`` the way the README's quick start does:
no database or Redis URL, so SQLite under ``AAMI_DATA_DIR`` and in-process jobs, on a
free loopback port. Admin tokens come from ``aami-server admin-token create``.

:func:`chromium` starts Debian's ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``
with a fresh profile; nothing is downloaded.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import requests

from tests.integration.live_server import AAMI_SERVER, aami_env, last_line, run_cli
from tests.support.services import LOOPBACK, LocalServer, skip_or_fail

T = TypeVar("T")

CHROMIUM = os.environ.get("AAMI_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AAMI_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
DESKTOP = (1280, 900)
PHONE = (390, 844)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``probe`` until it returns something truthy; return that, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # a page mid-update: try again until the deadline
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(interval)


class EmbeddedServer(LocalServer):
    """``aami-server serve`` with nothing but ``AAMI_DATA_DIR``: the embedded default."""

    name = "aami-ui-server"
    ready_timeout: ClassVar[float] = 30.0

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.settings = {
            "AAMI_DATA_DIR": str(self.data_dir),
            "AAMI_LOG_LEVEL": "warning",
            "TMPDIR": str(self.data_dir / "tmp"),
        }
        self.leftovers: list[int] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def cli(self, *args: str) -> str:
        return run_cli(*args, settings=self.settings, cwd=self.data_dir).stdout

    @property
    def policy_public_key(self) -> str:
        """The key the server signs policies with (it made one at its first start)."""
        return last_line(self.cli("policy-key", "show"))

    def admin_token(self, name: str, role: str = "admin") -> str:
        """A new admin token from the CLI, as an operator makes one."""
        return last_line(self.cli("admin-token", "create", "--name", name, "--role", role))

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``); anything left in its session is killed and
        recorded in ``leftovers``, so a test can fail on a leaked process."""
        proc = self._proc
        super().stop(timeout)
        if proc is not None:
            for pid in self._session_members(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.leftovers.append(pid)

    @staticmethod
    def _session_members(session_id: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == session_id and fields[0] != "Z":
                    found.append(int(entry.name))
        return found

    def _prepare(self) -> None:
        (self.data_dir / "tmp").mkdir(exist_ok=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [str(AAMI_SERVER), "serve", "--host", LOOPBACK, "--port", str(self.port),
                "--workers", "1", "--threads", "16"]
        return self._popen(argv, env=aami_env(self.settings))

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False


# --------------------------------------------------------------------------- the browser


def chromium_or_skip() -> None:
    """Skip (fail under CI=true) when Selenium, Chromium or its driver is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        skip_or_fail(
            "the browser tests need Selenium: pip install 'selenium>=4.10' "
            "(scripts/test installs the dev extra)"
        )
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.exists(path) or shutil.which(path)):
            skip_or_fail(f"the browser tests need {path}: apt-get install {package}")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium with a profile of its own, quit (and the profile removed) after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="aami-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console, for tests
    service = Service(CHROMEDRIVER, log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def emulate(driver: Any, width: int, height: int, *, mobile: bool) -> None:
    """Make the page's viewport exactly ``width`` x ``height`` CSS pixels."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def full_page_png(driver: Any, path: Path, width: int, *, mobile: bool) -> tuple[int, int]:
    """Save the whole page (not only the viewport) at ``width`` CSS pixels as a PNG."""
    emulate(driver, width, 600, mobile=mobile)
    # The body's own height: the document is never shorter than the viewport.
    height = int(driver.execute_script(
        "return Math.ceil(document.body.getBoundingClientRect().height)"
    ))
    emulate(driver, width, height, mobile=mobile)
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return width, height


class Browser:
    """A Selenium driver pointed at one server, with the few moves the tests repeat."""

    def __init__(self, driver: Any, base_url: str, tokens: dict[str, str]) -> None:
        self.driver = driver
        self.base_url = base_url
        self.tokens = tokens

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url.removeprefix(self.base_url)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def texts(self, css: str) -> list[str]:
        return [node.text.strip() for node in self.find_all(css)]

    def log_out(self) -> None:
        """Forget every cookie: the next page needs a login."""
        self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})

    def log_in(self, role: str = "admin") -> None:
        self.log_out()
        self.open("/ui/login")
        self.find("#token").send_keys(self.tokens[role])
        self.find("form.stack button[type=submit]").click()
        wait_for(lambda: "/ui/login" not in self.path, 10, f"the {role} login to finish")

    def mark_page(self) -> None:
        """Tag the loaded document; a reload or navigation loses the tag."""
        self.driver.execute_script("window.__aamiTestMarker = 'still-here';")

    def same_page(self) -> bool:
        """The tagged document is still the one loaded, without any reload."""
        return bool(
            self.driver.execute_script(
                "return window.__aamiTestMarker === 'still-here'"
                " && performance.getEntriesByType('navigation').length === 1"
                " && performance.getEntriesByType('navigation')[0].type !== 'reload';"
            )
        )

    def live_updates(self) -> int:
        return int(self.driver.execute_script("return (window.AAMI_LIVE || {}).updates || 0;"))

    def post_form(self, action: str, fields: dict[str, str]) -> int:
        """POST urlencoded ``fields`` to ``action`` from the page (as a forged form would);
        returns the final HTTP status."""
        status: int = self.driver.execute_async_script(
            """
            const [action, fields, done] = arguments;
            fetch(action, {method: "POST", body: new URLSearchParams(fields),
                           credentials: "same-origin"})
              .then((reply) => done(reply.status), () => done(-1));
            """,
            action,
            fields,
        )
        return status
