"""``tagsearch dashboard`` in a real browser (headless Debian Chromium through selenium), and where it
listens: loopback by default, a warning for a public host.

The study shown is a real tagsearch study (three finished tfidf trials with their learning curves and
user attributes). The trial list page is saved to ``results/dashboard-screenshot.png``. Skips, saying
why, without selenium, /usr/bin/chromium or /usr/bin/chromedriver.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, write_spec

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = REPO / "results" / "dashboard-screenshot.png"
STUDY, TRIALS = "browser-study", 3
ERROR_TEXT = re.compile(r"\b(Error|Exception|Failed to|Something went wrong|Unexpected)\b")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def study_url(tmp_path_factory, tiny_csv) -> str:
    from tagsearch.study import search
    from tagsearch.study import objective
    from tagsearch.data.corpus import load_corpus
    from tagsearch.study.spec import load_spec
    from tagsearch.runtime.trials import run_trials

    folder = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{folder}/dash.db"
    spec = load_spec(write_spec(folder / "tfidf.toml", model="tfidf", data=tiny_csv, name=STUDY))
    corpus = load_corpus(spec.data_config())
    run_trials(search.open_study(spec, corpus, url), objective.Objective(spec, corpus), TRIALS, wait_for_running=False)
    return url


def start_dashboard(url: str, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tagsearch.cli", "dashboard", "--storage", url, "--port", str(port),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_until_serving(port: int, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the dashboard exited with {server.returncode}: {server.communicate()[1]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the dashboard did not answer on port {port} within {seconds}s")


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a socket in LISTEN state on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.add(address)
    return found


def stop(server: subprocess.Popen) -> str:
    if server.poll() is None:
        server.terminate()
    try:
        return server.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        server.kill()
        return server.communicate()[1]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing; install Debian's chromium and chromium-driver to run browser tests")
    profile = tempfile.mkdtemp(prefix="tagsearch-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, what: str, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.25).until(lambda d: condition(d))
    except Exception:
        body = driver.find_element("tag name", "body").text
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{body[:2000]}") from None


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def assert_no_errors(driver, where: str) -> None:
    text = page_text(driver)
    assert not ERROR_TEXT.search(text), f"{where} shows an error:\n{text[:2000]}"
    severe = [entry for entry in driver.get_log("browser")
              if entry["level"] == "SEVERE" and "favicon" not in entry["message"]]
    assert not severe, f"{where}: errors in the browser console: {severe}"


def trial_entries(driver) -> list[str]:
    """The trial list's entries ("Trial 0", "Trial 1", ...), from the leaf text elements."""
    elements = driver.find_elements("xpath", "//*[not(*) and starts-with(normalize-space(.), 'Trial ')]")
    return sorted({e.text.strip() for e in elements if re.fullmatch(r"Trial \d+", e.text.strip())})


@pytest.mark.timeout(180)
def test_dashboard_renders_the_study_and_its_trials_in_chromium(study_url, browser):
    port = free_port()
    server = start_dashboard(study_url, port)
    try:
        wait_until_serving(port, server)
        base = f"http://127.0.0.1:{port}/dashboard"

        browser.get(base)
        wait_for(browser, lambda d: STUDY in page_text(d), "the study list")
        assert_no_errors(browser, "the study list")
        browser.find_element("xpath", f"//a[contains(@href, '/dashboard/studies/') and contains(., '{STUDY}')]").click()
        wait_for(browser, lambda d: re.search(r"/studies/\d+$", d.current_url), "the study page")
        study_page = browser.current_url
        wait_for(browser, lambda d: "Best Trial" in page_text(d) and "Intermediate values" in page_text(d),
                 "the study overview (best trial, learning curves)")
        text = page_text(browser)
        assert f"{STUDY} (id=" in text and "Study User Attributes" in text and "data_source" in text
        assert_no_errors(browser, "the study page")

        browser.get(f"{study_page}/trials")
        wait_for(browser, lambda d: len(trial_entries(d)) == TRIALS, f"{TRIALS} trials in the trial list")
        wait_for(browser, lambda d: "User Attributes" in page_text(d) and "val_micro_f1" in page_text(d),
                 "the selected trial's user attributes")
        text = page_text(browser)
        assert f"{TRIALS} Trials" in text and text.count("Complete") >= TRIALS
        assert "Intermediate Values" in text and "config" in text and "defaults" in text
        assert trial_entries(browser) == [f"Trial {i}" for i in range(TRIALS)]
        assert_no_errors(browser, "the trial list")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT)) and SCREENSHOT.stat().st_size > 10_000
    finally:
        err = stop(server)
    assert "Traceback" not in err and "warning" not in err.lower(), err


@pytest.mark.timeout(120)
def test_dashboard_listens_on_loopback_only_by_default(study_url):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp to see which address the server listens on")
    port = free_port()
    server = start_dashboard(study_url, port)
    try:
        wait_until_serving(port, server)
        addresses = listening_addresses(port)
    finally:
        err = stop(server)
    assert addresses == {"0100007F"}, f"listening on {addresses} (0100007F is 127.0.0.1)"
    assert f"http://127.0.0.1:{port}/dashboard/" in err and "warning" not in err


@pytest.mark.timeout(120)
def test_public_host_prints_a_warning_first(study_url):
    """--host 0.0.0.0 warns before serving. The port is held on 127.0.0.1 by this test, so the bind on
    0.0.0.0 fails and nothing is ever reachable from outside; the failure is one error line."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = start_dashboard(study_url, port, "--host", "0.0.0.0")
        try:
            code = server.wait(timeout=90)
        finally:
            err = stop(server)
    lines = err.strip().splitlines()
    assert lines[0].startswith("warning: serving on 0.0.0.0, reachable from other machines"), err
    assert "--host 127.0.0.1" in lines[0]
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert errors[0].startswith(f"error: cannot serve on 0.0.0.0:{port}: Address already in use"), err
    assert "Traceback" not in err
