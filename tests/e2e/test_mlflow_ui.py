"""Promotion clicked in the real MLflow UI (Debian's headless Chromium driven by selenium): a
running `prodguard serve` follows the new champion within its poll interval, the replica that
saw the move records it (once) and keeps the previous champion as standby. Screenshots of the
alias editor and of the model's versions afterwards are kept in test-artifacts/."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLIGHT_REQUEST, ROOT, make_project
from tests.e2e.cli import HEADLESS_CHROMIUM_FLAGS, run, serving
from tests.e2e.test_serving_http import post

pytestmark = pytest.mark.e2e
ARTIFACTS = ROOT / "test-artifacts"
POLL_SECONDS = 2.0
INSTALL = "apt-get install -y chromium chromium-driver"
CHROMIUM_FLAGS = (*HEADLESS_CHROMIUM_FLAGS, "--window-size=1400,1000")


@pytest.fixture
def project(served_project: Path, tmp_path: Path) -> Path:
    """v2 champion, v1 standby (both trained, promoted through prodguard)."""
    root = make_project(tmp_path / "project")
    shutil.copytree(served_project / ".prodguard", root / ".prodguard")
    return root


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Debian's Chromium under its chromedriver; missing: a failure in CI, a skip elsewhere."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        message = f"Debian's chromium and chromium-driver are needed: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def click(driver: Any, xpath: str, timeout: float = 60) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(driver, timeout).until(
        expected_conditions.element_to_be_clickable((By.XPATH, xpath))
    ).click()


def dismiss_first_visit_dialog(driver: Any, timeout: float = 10) -> None:
    """The registry's one-time "new Model Registry UI" dialog, if it shows."""
    from selenium.common.exceptions import TimeoutException

    with contextlib.suppress(TimeoutException):
        click(driver, "//div[@role='dialog']//button[normalize-space(.)='Try it now']", timeout)


def set_champion_in_the_ui(driver: Any, base: str, model: str, version: int) -> float:
    """Click through the MLflow UI as a user does; returns when "Save aliases" was clicked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait

    driver.get(f"{base}/")
    click(driver, "//*[normalize-space(text())='Model training']")  # MLflow 3 opens in GenAI
    click(driver, "//a[normalize-space(.)='Model registry']")
    dismiss_first_visit_dialog(driver)
    close_assistant(driver)
    click(driver, f"//a[normalize-space(.)='{model}']")
    click(driver, f"//a[normalize-space(.)='Version {version}']")
    editor = "//button[@title='Add aliases' or @title='Edit aliases']"  # Edit: it has one
    click(driver, editor)
    box = WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "[role=dialog] input[role=combobox]")
    )
    box.send_keys("champion")
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 30).until(
        lambda d: (
            "also being used on version" in d.find_element(By.CSS_SELECTOR, "[role=dialog]").text
        )
    )
    driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_alias_editor.png"))
    click(driver, "//button[normalize-space(.)='Save aliases']")
    saved = time.monotonic()
    WebDriverWait(driver, 30).until(
        lambda d: not d.find_elements(By.XPATH, "//button[normalize-space(.)='Save aliases']")
    )
    return saved


def close_assistant(driver: Any) -> None:
    """The MLflow Assistant side panel, closed so the screenshot shows the registry."""
    from selenium.common.exceptions import TimeoutException

    title = "//*[normalize-space(text())='MLflow Assistant']"
    panel = f"{title}/ancestor::*[.//button[@aria-label='Close']][1]"
    with contextlib.suppress(TimeoutException):
        click(driver, f"{panel}//button[@aria-label='Close']", timeout=5)


def version_row(driver: Any, version: int) -> str:
    from selenium.webdriver.common.by import By

    link = f".//a[normalize-space(.)='Version {version}']"
    rows = driver.find_elements(By.XPATH, f"//*[self::tr or @role='row'][{link}]")
    return rows[0].text if rows else ""


def test_a_champion_set_in_the_mlflow_ui_is_served_recorded_and_keeps_a_standby(
    project: Path, mlflow_ui, browser
) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    ARTIFACTS.mkdir(exist_ok=True)
    status = json.loads(run(project, "status", "--json").stdout)
    assert status["aliases"] == {"champion": 2, "standby": 1, "candidate": None}
    records = len(json.loads(run(project, "audit", "--json").stdout))
    env = {"PRODGUARD_SERVING__POLL_SECONDS": str(POLL_SECONDS)}
    with serving(project, env) as service:
        assert post(service, "/predict", FLIGHT_REQUEST)[1]["version"] == 2
        mlflow = mlflow_ui(status)

        saved = set_champion_in_the_ui(browser, mlflow, status["model"], version=1)

        served_at = None
        while time.monotonic() < saved + 60:
            code, body = post(service, "/predict", FLIGHT_REQUEST)
            assert code == 200, body
            if body["version"] == 1:
                served_at = time.monotonic()
                break
            time.sleep(0.1)
        assert served_at is not None, "the service never served the champion set in the UI"
        seconds = served_at - saved
        print(f"\nUI 'Save aliases' -> replica serving v1: {seconds:.2f} s (poll {POLL_SECONDS} s)")
        assert seconds <= POLL_SECONDS + 3  # one poll (v1 was loaded as standby) + requests

        # the replica recorded it before anyone ran `prodguard status`
        audit = json.loads(run(project, "audit", "--json").stdout)
        assert [r["action"] for r in audit[records:]] == ["reconcile"]
        record = audit[-1]
        assert record["evidence"]["seen_by"].startswith("serving replica ")
        assert record["evidence"]["outside_move"] == {"from": 2, "to": 1}
        assert record["evidence"]["observed"] == {"champion": 1, "standby": 1, "candidate": None}
        assert record["to_state"] == {"champion": 1, "standby": 2, "candidate": None}
        assert "v2 kept as standby" in record["reason"]
        after = json.loads(run(project, "status", "--json").stdout)
        assert after["reconciled"] is None
        assert after["aliases"] == record["to_state"]
        assert after["standby_since"] == record["time"]
        assert after["traffic"]["describe"].endswith("standby warm")
        served = post(service, "/predict", FLIGHT_REQUEST)[1]
        assert served["version"] == 1

        # what the user now sees in the UI: v1 champion, v2 its standby
        browser.get(f"{mlflow}/#/models/{status['model']}")
        WebDriverWait(browser, 60).until(lambda d: "standby" in version_row(d, 2))
        assert "champion" in version_row(browser, 1) and "standby" not in version_row(browser, 1)
        assert "champion" not in version_row(browser, 2)
        close_assistant(browser)
        browser.set_window_size(1400, 2400)  # both versions' rows (each lists ~25 tags)
        browser.save_screenshot(str(ARTIFACTS / "mlflow_ui_promotion.png"))
