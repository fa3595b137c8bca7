"""The upload service's page (``GET /``) in a real browser: Debian's Chromium, driven by Selenium.

``pyowtorrent serve`` runs as a process on loopback with a tokens file; the page uploads through its file
input and by drag-and-drop, shows the progress, lists the dataset with a magnet link and a ``.torrent``
that agree, shows the service's own message for each refusal (401, 403, 409, 413, 422) with nothing
published, cancels, puts the service's strings in as text, deletes, reads a service whose reads need the
token with it, and without JavaScript shows only a note.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the Python package ``selenium``
(tests/run.sh installs them).  Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver, so it
never tries to download a browser or a driver.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyowtorrent.metainfo.magnet import parse_magnet
from pyowtorrent.metainfo.torrent_file import parse_metainfo

from .engine_util import make_zip

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "page-test-token-0123456789abcdef"
MAX_UPLOAD = 1536 << 10  # the service's --max-upload-size: the 413 case is a zip over it
WAIT = 15.0  # seconds for anything the page does on loopback

# Chromium as a test needs it on this machine: no sandbox (root), no GPU, no /dev/shm, and none of its
# own connections to the outside (refused here, and slow to give up on).
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


def _require_browser() -> None:
    """Fail, naming the package, when the browser, its driver or Selenium is missing."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package 'chromium')")
    if not os.access(CHROMEDRIVER, os.X_OK):
        missing.append(f"{CHROMEDRIVER} (Debian package 'chromium-driver')")
    if importlib.util.find_spec("selenium") is None:
        missing.append("the Python package 'selenium' (the 'test' extra)")
    if missing:
        pytest.fail("the page's browser test needs " + ", ".join(missing) + ": tests/run.sh installs them")


# -- the service, as a process -------------------------------------------------------------------


class Served:
    def __init__(self, url: str, data: Path, files: Path) -> None:
        self.url = url  # ends in "/"
        self.data = data
        self.files = files  # where the tests make their uploads

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, json.loads(raw)

    def listing(self) -> dict[str, dict[str, Any]]:
        status, doc = self.request("GET", "uploads", token=None)
        assert status == 200, doc
        return {d["name"]: d for d in doc["uploads"]}

    def zip(self, name: str, size: int = 60_000, seed: int = 1) -> Path:
        return make_zip(self.files / name, {"worm/a.bin": size // 2, "worm/b.bin": size - size // 2}, seed)


@contextlib.contextmanager
def _serve(root: Path, *flags: str) -> Iterator[Served]:
    """``pyowtorrent serve`` on 127.0.0.1, free ports, data in ``root/data``, writes for ``TOKEN``."""
    root.mkdir(parents=True, exist_ok=True)
    tokens = root / "tokens"
    tokens.write_text(f"# the page test's token\n{TOKEN}\n")
    tokens.chmod(0o600)
    log = (root / "serve.log").open("wb")
    cmd = [
        sys.executable, "-m", "pyowtorrent", "serve",
        "--data", str(root / "data"),
        "--listen", "127.0.0.1", "--port", "0", "--peer-port", "0",
        "--tokens", str(tokens),
        "--max-upload-size", str(MAX_UPLOAD),
        *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    try:
        # "serving DIR at URL (...)": the URL, port included, once it serves.
        deadline = time.monotonic() + 30
        line = b""
        while not line.startswith(b"serving "):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pyowtorrent serve did not start: {(root / 'serve.log').read_text()[-2000:]}")
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
        url = line.decode().split(" at ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/"), line
        yield Served(url, root / "data", root / "files")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    _require_browser()
    with _serve(tmp_path_factory.mktemp("page")) as service:
        yield service


# -- the browser -----------------------------------------------------------------------------------


def _chrome(profile: Path, javascript: bool = True) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    # An explicit driver: Selenium Manager is never asked to find or download one.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = _chrome(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def _opened(browser: Any, url: str, downloads: Path) -> Iterator[Any]:
    """The page at ``url``, freshly loaded, no token held, downloads saved in ``downloads``; after the
    block, no script error in the console."""
    browser.get(url)
    browser.execute_script("sessionStorage.clear()")
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.get(url)
    until(browser, lambda d: d.find_element("id", "app").is_displayed(), "the page's script to show it")
    browser.get_log("browser")  # what came before
    yield browser
    errors = [e["message"] for e in browser.get_log("browser") if _script_error(e)]
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture
def page(served: Served, browser: Any, tmp_path: Path) -> Iterator[Any]:
    with _opened(browser, served.url, tmp_path) as driver:
        yield driver


def _script_error(entry: dict[str, Any]) -> bool:
    # The refusals the tests cause are logged by Chromium as failed resources ("the server responded
    # with a status of 403"): expected.  Anything else at SEVERE is the page's own fault.
    return entry["level"] == "SEVERE" and "the server responded with a status of" not in entry["message"]


def until(driver: Any, condition: Any, what: str, timeout: float = WAIT) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(condition, f"timed out after {timeout:g} s waiting for {what}")


def set_token(driver: Any, token: str) -> None:
    if not token:
        driver.find_element("id", "forget-token").click()
        return
    field = driver.find_element("id", "token")
    field.clear()
    field.send_keys(token)


def choose_and_upload(driver: Any, path: Path, replace: bool = False) -> None:
    driver.find_element("id", "file").send_keys(str(path))
    if replace:
        driver.find_element("id", "replace").click()
    driver.find_element("id", "upload-button").click()


def message_about(driver: Any, name: str) -> tuple[str, str]:
    """The page's message on the upload of ``name`` once there is one: (kind, text)."""

    def find(d: Any) -> tuple[str, str] | None:
        for m in d.find_elements("css selector", "#upload-status .message"):
            if name in m.text:
                return m.get_attribute("data-kind"), m.text
        return None

    found: tuple[str, str] = until(driver, find, f"the page's message on {name}")
    return found


_ROW_JS = "return [...document.querySelectorAll('#rows tr')].find(tr => tr.dataset.name === arguments[0]) || null"


def row_of(driver: Any, name: str) -> Any:
    return driver.execute_script(_ROW_JS, name)


def listed_row(driver: Any, name: str, state: str = "seeding") -> Any:
    """The dataset's row once it shows in ``state`` with both of its links."""

    def ready(d: Any) -> Any:
        r = row_of(d, name)
        if r is None or r.find_element("css selector", ".state").get_attribute("data-state") != state:
            return None
        links = [r.find_element("css selector", c).get_attribute("href") for c in ("a.magnet", "a.torrent")]
        return r if all(links) else None

    return until(driver, ready, f"{name} listed as {state} with its links")


def downloaded(driver: Any, folder: Path, filename: str) -> bytes:
    """The file the browser saved in ``folder`` once it is complete."""
    path = folder / filename
    until(driver, lambda d: path.is_file() and not any(folder.glob("*.crdownload")), f"the browser to save {filename}")
    return path.read_bytes()


def nothing_published(served: Served, name: str) -> None:
    assert name not in served.listing()
    assert not (served.data / name).exists()


def api_refusal(served: Served, name: str, body: bytes, token: str | None = TOKEN) -> dict[str, Any]:
    """The service's JSON refusal of the same upload through the API: the page must show its message."""
    status, doc = served.request("PUT", f"uploads/{name}", body, token=token)
    assert status >= 400, doc
    return doc


# -- the flow ---------------------------------------------------------------------------------------


def test_an_upload_through_the_file_input_shows_progress_then_lists_it_with_a_magnet_and_its_torrent(
    served: Served, page: Any, tmp_path: Path
) -> None:
    src = served.zip("worm-input.zip", size=1 << 20, seed=2)
    set_token(page, TOKEN)
    # Slowed to about 1 s, the bar shows the upload as it goes; every percent it showed is recorded.
    page.execute_script(
        "window.seenPercents = [];"
        "new MutationObserver(() => seenPercents.push(document.getElementById('percent').textContent))"
        ".observe(document.getElementById('percent'), {childList: true, characterData: true, subtree: true});"
    )
    page.set_network_conditions(offline=False, latency=0, download_throughput=-1, upload_throughput=1 << 20)
    try:
        choose_and_upload(page, src)
        until(page, lambda d: d.find_element("id", "progress-box").is_displayed(), "the progress bar")
        kind, text = message_about(page, "worm-input.zip")
    finally:
        page.delete_network_conditions()
    assert kind == "ok" and text.startswith("Published worm-input.zip"), text
    seen = [int(p.rstrip("%")) for p in page.execute_script("return seenPercents")]
    assert any(0 < p < 100 for p in seen) and seen[-1] == 100, f"the progress bar showed {seen}"
    assert not page.find_element("id", "progress-box").is_displayed()

    row = listed_row(page, "worm-input.zip")
    magnet = row.find_element("css selector", "a.magnet").get_attribute("href")
    torrent_url = row.find_element("css selector", "a.torrent").get_attribute("href")
    api = served.listing()["worm-input.zip"]
    assert magnet == api["magnet"] and torrent_url == api["torrent_url"]
    assert api["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() and api["size"] == src.stat().st_size
    # The .torrent link downloads the torrent the magnet names, of the file uploaded.
    row.find_element("css selector", "a.torrent").click()
    meta = parse_metainfo(downloaded(page, tmp_path, "worm-input.zip.torrent"))
    assert meta.info_hash == parse_magnet(magnet).info_hash == bytes.fromhex(row.get_attribute("data-info-hash"))
    assert meta.name == "worm-input.zip" and meta.total_length == src.stat().st_size
    cells = [c.text for c in row.find_elements("css selector", "th, td")]
    assert cells[0].startswith("worm-input.zip") and cells[1] == "1.00 MiB" and cells[2] == "seeding", cells
    assert cells[3] == "0" and cells[5] == "0 B/s", cells  # peers, upload rate: nobody is downloading
    assert row.find_element("css selector", "a.torrent").get_attribute("download") == "worm-input.zip.torrent"
    # The token stays in this tab's storage and out of every URL.
    assert page.execute_script("return sessionStorage.getItem('pyowtorrent.token')") == TOKEN
    assert TOKEN not in page.current_url and TOKEN not in magnet and TOKEN not in torrent_url
    page.save_screenshot(str(tmp_path / "page.png"))


def test_a_zip_dropped_on_the_drop_zone_is_uploaded_and_listed(served: Served, page: Any) -> None:
    data = served.zip("worm-dropped.zip", seed=3).read_bytes()
    set_token(page, TOKEN)
    # What a drag from the desktop delivers: a DataTransfer holding a File.
    highlighted = page.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const file = new File([bytes], "worm-dropped.zip", {type: "application/zip"});
        const dt = new DataTransfer();
        dt.items.add(file);
        const zone = document.getElementById("dropzone");
        const fire = (type) =>
            zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
        fire("dragenter");
        fire("dragover");
        const highlighted = zone.classList.contains("dragover");
        fire("drop");
        return highlighted && !zone.classList.contains("dragover");
        """,
        base64.b64encode(data).decode(),
    )
    assert highlighted, "the drop zone is not highlighted while a file is dragged over it"
    kind, text = message_about(page, "worm-dropped.zip")
    assert kind == "ok", text
    listed_row(page, "worm-dropped.zip")
    assert served.listing()["worm-dropped.zip"]["sha256"] == hashlib.sha256(data).hexdigest()


# -- refusals: the service's message, nothing published ---------------------------------------------


def test_a_wrong_token_shows_the_403_and_publishes_nothing(served: Served, page: Any, tmp_path: Path) -> None:
    src = served.zip("refused.zip", seed=4)
    set_token(page, "not-the-token")
    choose_and_upload(page, src)
    kind, text = message_about(page, "refused.zip")
    expected = api_refusal(served, "refused.zip", src.read_bytes(), token="not-the-token")
    assert expected["status"] == 403
    assert kind == "error" and "(403)" in text and expected["error"] in text and "Check the token" in text, text
    nothing_published(served, "refused.zip")
    page.save_screenshot(str(tmp_path / "refused.png"))


def test_no_token_shows_the_401(served: Served, page: Any) -> None:
    src = served.zip("anonymous.zip", seed=5)
    set_token(page, "")
    choose_and_upload(page, src)
    kind, text = message_about(page, "anonymous.zip")
    assert kind == "error" and "(401)" in text and "enter your upload token" in text, text
    nothing_published(served, "anonymous.zip")


def test_a_file_that_is_not_a_zip_shows_the_422_and_publishes_nothing(served: Served, page: Any) -> None:
    fake = served.files / "notes.zip"
    fake.write_text("these are notes, not a zip archive\n" * 50)
    set_token(page, TOKEN)
    choose_and_upload(page, fake)
    kind, text = message_about(page, "notes.zip")
    expected = api_refusal(served, "notes.zip", fake.read_bytes())
    assert expected["status"] == 422
    assert kind == "error" and "(422)" in text and expected["error"] in text, text
    nothing_published(served, "notes.zip")


def test_a_zip_over_the_size_limit_shows_the_413(served: Served, page: Any) -> None:
    big = served.zip("too-big.zip", size=MAX_UPLOAD + (256 << 10), seed=6)
    set_token(page, TOKEN)
    choose_and_upload(page, big)
    kind, text = message_about(page, "too-big.zip")
    assert kind == "error" and "(413)" in text and f"over the limit of {MAX_UPLOAD}" in text, text
    nothing_published(served, "too-big.zip")


def test_a_name_taken_shows_the_409_and_replace_replaces_it(served: Served, page: Any) -> None:
    first = served.zip("taken.zip", seed=7)
    status, doc = served.request("PUT", "uploads/taken.zip", first.read_bytes())
    assert status == 201, doc
    second = served.zip("second/taken.zip", seed=8)
    set_token(page, TOKEN)
    choose_and_upload(page, second)
    kind, text = message_about(page, "taken.zip")
    assert kind == "error" and "(409)" in text and "exists already" in text, text
    assert served.listing()["taken.zip"]["info_hash"] == doc["info_hash"]

    choose_and_upload(page, second, replace=True)
    kind, text = message_about(page, "taken.zip")
    assert kind == "ok" and text.startswith("Replaced taken.zip"), text
    new = served.listing()["taken.zip"]
    assert new["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    until(page, lambda d: row_of(d, "taken.zip").get_attribute("data-info-hash") == new["info_hash"], "the new torrent")
    assert not page.find_element("id", "replace").is_selected()  # a replace is asked for each time


def test_cancel_stops_the_upload_and_publishes_nothing(served: Served, page: Any) -> None:
    src = served.zip("cancelled.zip", size=1 << 20, seed=12)
    set_token(page, TOKEN)
    page.set_network_conditions(offline=False, latency=0, download_throughput=-1, upload_throughput=64 << 10)
    try:
        choose_and_upload(page, src)
        cancel = page.find_element("id", "cancel")
        until(page, lambda d: cancel.is_displayed(), "the Cancel button")
        cancel.click()
        kind, text = message_about(page, "cancelled.zip")
    finally:
        page.delete_network_conditions()
    assert kind == "error" and "cancelled" in text, text
    assert not page.find_element("id", "progress-box").is_displayed()
    assert page.find_element("id", "upload-button").is_enabled()
    nothing_published(served, "cancelled.zip")


# -- the list ---------------------------------------------------------------------------------------------


def test_the_list_follows_the_service_and_shows_its_strings_as_text(served: Served, page: Any) -> None:
    # Published by another client while the page is open: it shows up, its name as text, not markup.
    name = "a&lt;i&gt;b &amp; c.zip"
    body = served.zip("x.zip", seed=9).read_bytes()
    status, doc = served.request("PUT", "uploads/" + urllib.request.quote(name), body)
    assert status == 201, doc
    row = listed_row(page, name)
    assert row.find_element("css selector", ".name").text == name
    assert not page.find_elements("css selector", "#rows i")
    assert parse_magnet(row.find_element("css selector", "a.magnet").get_attribute("href")).display_name == name


def test_delete_asks_then_removes_the_dataset(served: Served, page: Any) -> None:
    status, doc = served.request("PUT", "uploads/gone.zip", served.zip("gone.zip", seed=10).read_bytes())
    assert status == 201, doc
    set_token(page, TOKEN)
    listed_row(page, "gone.zip").find_element("css selector", "button.delete").click()
    alert = until(page, lambda d: d.switch_to.alert, "the confirmation")
    assert "Delete gone.zip?" in alert.text
    alert.accept()
    until(page, lambda d: row_of(d, "gone.zip") is None, "gone.zip to leave the list")
    status_line = page.find_element("id", "action-status")
    assert status_line.text == "Deleted gone.zip." and status_line.get_attribute("data-kind") == "ok"
    nothing_published(served, "gone.zip")


def test_with_private_reads_the_list_and_the_torrent_need_the_token(
    served: Served, browser: Any, tmp_path: Path
) -> None:
    with _serve(tmp_path / "private", "--private-reads") as private:
        status, doc = private.request("PUT", "uploads/private.zip", private.zip("private.zip", seed=11).read_bytes())
        assert status == 201, doc
        with _opened(browser, private.url, tmp_path) as page:
            status_line = page.find_element("id", "list-status")
            until(page, lambda d: "(401)" in status_line.text, "the 401 on the list")
            assert "Listing the datasets needs a token" in status_line.text and not row_of(page, "private.zip")
            set_token(page, TOKEN)  # the list follows at once, with the token
            row = listed_row(page, "private.zip")
            assert not status_line.is_displayed()
            # A plain link would be refused (401): the page fetches the .torrent with the token.
            row.find_element("css selector", "a.torrent").click()
            meta = parse_metainfo(downloaded(page, tmp_path, "private.zip.torrent"))
            assert meta.info_hash.hex() == doc["info_hash"]
            assert TOKEN not in page.current_url


def test_without_javascript_the_page_shows_only_a_note(served: Served, tmp_path: Path) -> None:
    driver = _chrome(tmp_path / "profile", javascript=False)
    try:
        driver.get(served.url)
        assert "This page needs JavaScript" in driver.find_element("tag name", "body").text
        assert not driver.find_element("id", "app").is_displayed()
        assert driver.find_element("link text", "GET /uploads").get_attribute("href") == served.url + "uploads"
    finally:
        driver.quit()
