"""The page at / of a real `decoder serve`, in headless Chromium (Debian's chromium and
chromium-driver, which .ci/run installs): type a prompt, press Generate, watch the text stream in.
Skipped only where the browser or its driver is not installed."""

from __future__ import annotations

import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait
from servekit import server_process

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    # An explicit driver path: selenium then never asks Selenium Manager (the network) for one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_streams_generated_text_token_by_token(browser, onnx_bundle):
    with server_process(onnx_bundle) as (url, _):
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("Model "))
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("Harding wondered")
        Select(browser.find_element(By.ID, "strategy")).select_by_value("greedy")
        assert not browser.find_element(By.ID, "temperature").is_enabled()
        for field, value in (("max_tokens", "3000"),  # a few seconds of tokens, so the stream can be watched
                             ("repetition_penalty", "1"), ("no_repeat_ngram_size", "0")):  # no early <|endoftext|>
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "generate").click()

        lengths = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = browser.find_element(By.ID, "status").text
            text = browser.execute_script("return document.getElementById('completion')?.textContent ?? ''")
            lengths.append(len(text))
            if status.startswith("finished"):
                break
            time.sleep(0.05)
        assert status == "finished: length", status
        partial = [n for n in lengths if 0 < n < lengths[-1]]
        assert len(set(partial)) >= 2, f"text did not arrive piece by piece: lengths seen {sorted(set(lengths))[:10]}"
        assert browser.find_element(By.ID, "output").text.startswith("Harding wondered")
        assert browser.find_element(By.ID, "generate").is_enabled()
