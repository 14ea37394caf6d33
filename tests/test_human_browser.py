"""The rating app in a real browser: headless Chromium (Debian's chromium + chromium-driver) driving the real
`python -m rt_lab.human serve`. A rater rates with the keyboard, reloads mid-screen, the server is killed with
SIGKILL and restarted, the rater resumes, goes back to revise, and the report exports exactly what was
entered. Skipped only where Chromium or its driver is not installed."""

from __future__ import annotations

import csv
import functools
import http.server
import shutil
import sqlite3
import subprocess
import sys
import threading

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from helpers import REPO
from human_server import HumanServer, make_sweep
from rt_lab.layout import SweepDir

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no Chromium and chromedriver on PATH (Debian: apt-get install -y chromium "
                                       "chromium-driver)")


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for security-policy reports
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def press(driver, *keys: str) -> None:
    for key in keys:
        ActionChains(driver).send_keys(key).perform()


def screen(driver) -> dict[str, str]:
    """What the page shows: the item id (the form's hidden field), progress, both responses, the choices made."""
    def text(element_id: str) -> str:
        found = driver.find_elements(By.ID, element_id)
        return found[0].text if found else ""

    checked = {element.get_attribute("name"): element.get_attribute("value")
               for element in driver.find_elements(By.CSS_SELECTOR, "input[type=radio]") if element.is_selected()}
    return {"item": driver.find_element(By.NAME, "item").get_attribute("value"), "progress": text("progress-text"),
            "left": text("response-left"), "right": text("response-right"), "status": text("status"),
            "revising": "submitting replaces your rating" in driver.page_source, **checked}


def wait_for(driver, condition) -> dict[str, str]:
    """The screen once a fully loaded page (its script attached, so keys reach it) meets `condition`."""
    def ready(d):
        if d.execute_script("return document.readyState") != "complete":
            return False
        try:
            shown = screen(d)
        except WebDriverException as err:
            # the next page replaced this one between finding a node and reading it (Chromium's wording of a
            # stale element, not raised as StaleElementReferenceException)
            if "does not belong to the document" in str(err):
                return False
            raise
        return shown if condition(shown) else False

    return WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,)).until(ready)


def submit_and_wait(driver, previous_item: str) -> dict[str, str]:
    press(driver, Keys.ENTER)
    return wait_for(driver, lambda shown: shown["item"] != previous_item)


def test_rate_with_the_keyboard_reload_survive_a_killed_server_resume_revise_and_export(tmp_path, compose, browser):
    sweep = make_sweep(tmp_path / "sweep", compose)
    args = ["--pairs", "rt:it", "--raters", "alice,bob"]
    server = HumanServer(sweep, args, tmp_path / "server.log")
    db = sqlite3.connect(SweepDir(sweep).human_ratings)
    try:
        browser.get(server.raters["alice"])
        first = screen(browser)
        assert first["progress"] == "0 of 6 rated"
        press(browser, Keys.ENTER)  # nothing chosen yet: the screen stays, saying why
        assert screen(browser)["item"] == first["item"]
        assert "Rate both responses" in screen(browser)["status"]

        press(browser, "a", "l", "z")
        second = submit_and_wait(browser, first["item"])
        assert second["progress"] == "1 of 6 rated"
        # on disk already, before anything else happens
        assert db.execute("SELECT COUNT(*) FROM ratings WHERE rater = 'alice' AND submitted_at IS NOT NULL"
                          ).fetchone() == (1,)
        press(browser, "s", "k", "x")
        third = submit_and_wait(browser, second["item"])

        # half a screen, then a reload: the draft comes back
        press(browser, "d")
        wait_for(browser, lambda shown: shown["status"] == "Draft saved.")
        browser.refresh()
        reloaded = screen(browser)
        assert (reloaded["item"], reloaded["progress"], reloaded.get("left")) == \
            (third["item"], "2 of 6 rated", "not_acceptable")
        assert reloaded["status"] == "Draft restored."

        server.kill()  # no shutdown code runs
        server = HumanServer(sweep, args, tmp_path / "server.log")
        browser.get(server.raters["alice"])  # same token, new port
        resumed = screen(browser)
        assert (resumed["item"], resumed["progress"], resumed.get("left")) == \
            (third["item"], "2 of 6 rated", "not_acceptable")
        press(browser, "j", "c")
        fourth = submit_and_wait(browser, third["item"])
        assert fourth["progress"] == "3 of 6 rated"

        # back to the third item: its rating is shown and can be revised
        press(browser, Keys.BACKSPACE)
        back = wait_for(browser, lambda shown: shown["item"] == third["item"])
        assert back["revising"] and (back["left"], back["right"], back["preference"]) == \
            ("not_acceptable", "excellent", "right")
        press(browser, "z")
        after = submit_and_wait(browser, third["item"])
        assert (after["item"], after["progress"]) == (fourth["item"], "3 of 6 rated")

        browser.get(server.raters["bob"])  # another rater: nothing of alice's
        assert screen(browser)["progress"] == "0 of 6 rated"
    finally:
        server.close()

    # the export holds what was entered, turned from screen sides into methods with the server's side order
    subprocess.run([sys.executable, "-m", "rt_lab.human", "report", str(sweep)], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    with SweepDir(sweep).human_ratings_csv.open() as handle:
        exported = {row["item"]: row for row in csv.DictReader(handle)}
    entered = {first["item"]: ("excellent", "not_acceptable", "left", first),
               second["item"]: ("sufficient", "sufficient", "tie", second),
               third["item"]: ("not_acceptable", "excellent", "left", third)}  # revised: right -> left
    assert set(exported) == set(entered)
    for item, (left, right, preference, shown) in entered.items():
        row = exported[item]
        a_left = row["a_on_left"] == "1"
        response_a, response_b = db.execute("SELECT response_a, response_b FROM items WHERE id = ?",
                                            (item,)).fetchone()
        assert (shown["left"], shown["right"]) == ((response_a, response_b) if a_left else (response_b, response_a))
        assert (row["rating_a"], row["rating_b"]) == ((left, right) if a_left else (right, left))
        assert row["preference"] == {"left": "a" if a_left else "b", "right": "b" if a_left else "a",
                                     "tie": "tie"}[preference]
        assert row["rater"] == "alice" and row["revisions"] == ("1" if item == third["item"] else "0")


@pytest.fixture
def other_site(tmp_path):
    """Another origin on loopback whose page frames whatever `frame.html?src=URL` names."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "frame.html").write_text(
        "<!doctype html><iframe id=framed width=800 height=600></iframe>"
        "<script>document.getElementById('framed').src = new URLSearchParams(location.search).get('src');</script>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()


def test_the_page_works_under_its_security_policy_and_no_other_site_can_frame_it(tmp_path, compose, browser,
                                                                                   other_site):
    sweep = make_sweep(tmp_path / "sweep", compose)
    server = HumanServer(sweep, ["--pairs", "rt:it", "--raters", "alice"], tmp_path / "server.log")
    try:
        alice = server.raters["alice"]
        browser.get(alice)
        # the style sheet and the script load under the policy: the grid is laid out, a key saves a draft
        assert browser.execute_script(
            "return getComputedStyle(document.querySelector('.responses')).display") == "grid"
        press(browser, "a")
        wait_for(browser, lambda shown: shown["status"] == "Draft saved.")
        assert not [entry for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]]

        browser.get(f"{other_site}/frame.html?src={alice}")
        WebDriverWait(browser, 30).until(lambda d: any("frame-ancestors" in entry["message"]
                                                       for entry in d.get_log("browser")))
        browser.switch_to.frame("framed")
        assert "Which response is more helpful?" not in browser.page_source  # the browser showed nothing of it
        browser.switch_to.default_content()
    finally:
        server.close()
    assert '"GET /r/[alice]" 200' in (tmp_path / "server.log").read_text()  # served, then refused by the browser
