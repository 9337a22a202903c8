"""The leaderboard in a real headless browser (Debian's Chromium).

It loads, sorts, filters, links, and runs no injected code.

Screenshots go to ``$ROBENCH_SCREENSHOTS`` when set (else a temporary folder) for a person to
look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from leaderboard_data import XSS, XSS_TITLE, bad_files, shared_results

from robench.report.leaderboard.build import build_leaderboard

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
    pytest.skip(
        "headless Chromium is not installed: apt-get install chromium chromium-driver "
        "(.ci/run does it when it can)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_trained: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lbb")
    data = shared_results(tmp_path_factory, tiny_trained)
    bad_files(root / "bad", data["noisy"])
    lb = build_leaderboard([data["dir"], root / "bad"], root / "site", plots=True, examples=True)
    return {"lb": lb, "data": data}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("ROBENCH_SCREENSHOTS")
    path = Path(env) if env else tmp_path_factory.mktemp("shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = (
        CHROMIUM  # with the driver's path below, Selenium Manager (network) is never used
    )
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: Any, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    driver.get_log(
        "browser"
    )  # the log is drained per read; errors are checked after each interaction


def _errors(driver: Any) -> list[Any]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _visible_models(driver: Any) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    return [r.find_element(By.CSS_SELECTOR, "td a").text for r in rows if r.is_displayed()]


def _column(driver: Any, index: int) -> list[float]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    return [
        float(r.find_elements(By.TAG_NAME, "td")[index].get_attribute("data-sort")) for r in rows
    ]


def _full_shot(driver: Any, path: Path, width: int = 1440) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 40, 9000))
    driver.save_screenshot(str(path))
    driver.set_window_size(width, 1000)


def test_index_sorts_filters_and_has_no_console_errors(
    site: dict[str, Any], browser: Any, shots: Path
) -> None:
    lb = site["lb"]
    _open(browser, lb.index)
    assert _errors(browser) == []
    assert len(_visible_models(browser)) == len(lb.records) == 3  # one row per valid result
    assert XSS in _visible_models(browser)  # the hostile name is text in the table
    headers = browser.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
    clean = next(i for i, h in enumerate(headers) if h.text.startswith("Clean"))
    headers[clean].find_element(By.TAG_NAME, "button").click()
    values = _column(browser, clean)
    assert (
        values == sorted(values, reverse=True)
        and headers[clean].get_attribute("aria-sort") == "descending"
    )
    headers[clean].find_element(By.TAG_NAME, "button").click()
    assert _column(browser, clean) == sorted(values)
    contrast = next(i for i, h in enumerate(headers) if h.text == "Contr")
    headers[contrast].find_element(By.TAG_NAME, "button").click()
    col = _column(browser, contrast)
    assert col == sorted(col, reverse=True)
    browser.save_screenshot(str(shots / "index-sorted.png"))
    Select(browser.find_element(By.ID, "filter-defense")).select_by_visible_text("mixup")
    assert _visible_models(browser) == ["noisy"]
    assert browser.find_element(By.ID, "count").text == "1 of 3 results shown"
    browser.save_screenshot(str(shots / "index-filtered.png"))
    Select(browser.find_element(By.ID, "filter-defense")).select_by_index(0)
    browser.find_element(By.ID, "filter-name").send_keys("bas")
    assert _visible_models(browser) == ["base"]
    assert _errors(browser) == []
    browser.find_element(By.ID, "filter-name").send_keys(Keys.BACKSPACE * 3)
    assert len(_visible_models(browser)) == 3
    _full_shot(browser, shots / "index-full.png")


def test_model_pages_open_with_plots_and_images(
    site: dict[str, Any], browser: Any, shots: Path
) -> None:
    _open(browser, site["lb"].index)
    browser.find_element(By.LINK_TEXT, "base").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "base"
    imgs = browser.find_elements(By.TAG_NAME, "img")
    assert len(imgs) >= 2 + 2 * 4  # R bars, severity curves, 2 images x (clean, 2 corruptions, pgd)
    broken = [
        i.get_attribute("src")
        for i in imgs
        if not browser.execute_script("return arguments[0].naturalWidth > 0", i)
    ]
    assert broken == []
    assert _errors(browser) == []
    _full_shot(browser, shots / "model-base.png")
    browser.find_element(By.LINK_TEXT, "Perturbation gallery").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Perturbation gallery"
    assert _errors(browser) == []
    _full_shot(browser, shots / "gallery.png")


def test_hostile_text_runs_nothing(site: dict[str, Any], browser: Any, shots: Path) -> None:
    _open(browser, site["lb"].index)
    browser.find_element(By.LINK_TEXT, XSS).click()
    assert browser.find_element(By.TAG_NAME, "h1").text == XSS
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert browser.title != "pwned"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert XSS_TITLE in body and "<script>alert(2)</script>" in body
    assert (
        browser.execute_script("return document.querySelectorAll('img[src=\"x\"], script').length")
        == 0
    )
    assert _errors(browser) == []
    _full_shot(browser, shots / "model-hostile.png")
