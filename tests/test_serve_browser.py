"""The web page at / in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
pick an image, ask a question, see the answer, the confidence and the latency; a wrong key shows the 401.

CI installs the browser (.ci/run). Without it this test FAILS rather than skips, unless NANOVLM_SKIP_BROWSER=1
is set on purpose (a developer machine without Chromium)."""
import os
import shutil

import pytest

from nanovlm.serve.app import create_app
from nanovlm.serve.auth import Authenticator, KeyStore

from serve_util import live_server, model, model_dir, png_bytes, serve_config  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("NANOVLM_SKIP_BROWSER") == "1":
            pytest.skip("NANOVLM_SKIP_BROWSER=1 and no chromium/chromedriver")
        pytest.fail("chromium and chromedriver are needed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_answers_a_question_about_a_picked_image(browser, model, model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    store = KeyStore(tmp_path / "keys.json")
    key = store.add("browser")
    image = tmp_path / "picture.png"
    image.write_bytes(png_bytes((64, 48), "green"))
    app = create_app(model, serve_config(model_dir, no_auth=False), Authenticator(keys=store))
    wait = WebDriverWait(browser, 30)
    with live_server(app) as (url, _):
        browser.get(url + "/")
        assert browser.title == "nanovlm"

        def ask(api_key, mode, text):
            browser.find_element(By.ID, "apikey").clear()
            browser.find_element(By.ID, "apikey").send_keys(api_key)
            browser.find_element(By.ID, "file").send_keys(str(image))   # what picking a file does
            Select(browser.find_element(By.ID, "mode")).select_by_value(mode)
            browser.find_element(By.ID, "text").clear()
            browser.find_element(By.ID, "text").send_keys(text)
            browser.find_element(By.ID, "maxtokens").clear()
            browser.find_element(By.ID, "maxtokens").send_keys("6")
            browser.find_element(By.ID, "go").click()
            wait.until(lambda d: d.find_element(By.ID, "answer").text != "..." and
                       d.find_element(By.ID, "go").is_enabled())

        ask(key, "complete", "I see")
        assert browser.find_element(By.ID, "error").text == ""
        assert browser.find_element(By.ID, "answer").text.startswith("I see")
        assert browser.find_element(By.ID, "confidence").text.endswith("%")
        assert int(browser.find_element(By.ID, "latency").text) >= 0
        assert int(browser.find_element(By.ID, "roundtrip").text) >= 0
        wait.until(EC.visibility_of_element_located((By.ID, "preview")))

        ask(key, "vqa", "What colour is it?")
        assert browser.find_element(By.ID, "error").text == ""
        assert "%" in browser.find_element(By.ID, "confidence").text

        ask("nvk_not_a_key", "vqa", "What colour is it?")
        assert browser.find_element(By.ID, "error").text.startswith("401")
