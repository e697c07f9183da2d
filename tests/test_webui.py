"""The web UI in a real browser: headless Debian Chromium driven by selenium through chromedriver
loads the page from a live `latentdiff serve`, fills the form, adds a LoRA from the picker, clicks
Generate, and the image that appears is the pipeline's own (same pixels); bad input shows the
server's message; "reuse parameters" fills the form back; during a long run the progress bar and the
live preview move and Interrupt stops it. A screenshot is saved (set
LATENTDIFF_WEBUI_SCREENSHOT=path to keep it)."""

import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

try:
    from live_server import LiveServer, random_unet_lora
except ImportError:  # tests/ imported as a package
    from tests.live_server import LiveServer, random_unet_lora

from latentdiff.server import ServeConfig  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs Debian's chromium and chromium-driver")


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1200,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_generate_in_a_real_browser(browser, tmp_path, tiny_pipeline_dir, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from latentdiff.pipelines import TextToImagePipeline

    reference = TextToImagePipeline.from_pretrained(tiny_pipeline_dir)
    lora = random_unet_lora(reference.unet, tmp_path / "loras" / "shiny.safetensors")
    server = LiveServer(ServeConfig(model=str(tiny_pipeline_dir), lora_dir=tmp_path / "loras",
                                    outputs=tmp_path / "outputs"))
    try:
        wait = WebDriverWait(browser, 90)
        browser.get(server.url + "/")
        wait.until(lambda d: len(Select(d.find_element(By.ID, "sampler")).options) > 1)  # the API answered
        assert "DDIM" in [o.text for o in Select(browser.find_element(By.ID, "sampler")).options]
        assert [o.text for o in Select(browser.find_element(By.ID, "lora")).options] == ["shiny"]

        # bad input: the server's one-line message appears, nothing is added
        steps = browser.find_element(By.ID, "steps")
        steps.send_keys("-1")
        browser.find_element(By.ID, "generate").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "steps must be between 1 and"))
        assert browser.find_elements(By.CSS_SELECTOR, "#gallery img") == []

        steps.clear()
        steps.send_keys("4")
        browser.find_element(By.ID, "prompt").send_keys("red apple")
        Select(browser.find_element(By.ID, "sampler")).select_by_visible_text("DPM++ 2M")
        seed = browser.find_element(By.ID, "seed")
        seed.clear()
        seed.send_keys("5")
        weight = browser.find_element(By.ID, "lora-weight")
        weight.clear()
        weight.send_keys("0.5")
        browser.find_element(By.ID, "add-lora").click()
        assert browser.find_element(By.ID, "prompt").get_attribute("value") == "red apple <lora:shiny:0.5>"
        browser.find_element(By.ID, "generate").click()
        img = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#gallery .card img")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
        assert browser.find_element(By.ID, "error").text == ""
        text = browser.find_element(By.CSS_SELECTOR, "#gallery .card pre").text
        assert text.startswith("red apple <lora:shiny:0.5>") and "Sampler: DPM++ 2M" in text and "Seed: 5" in text

        shown = Image.open(io.BytesIO(base64.b64decode(img.get_attribute("src").split(",", 1)[1])))
        reference.load_lora(lora, scale=0.5)
        want = reference("red apple", sampler="dpmpp_2m", num_inference_steps=4, seed=5).images[0]
        np.testing.assert_array_equal(np.asarray(shown.convert("RGB")), np.asarray(want))
        assert len(list((tmp_path / "outputs").glob("*.png"))) == 1  # the UI asks the server to save

        # reuse parameters fills the form from the image's info
        browser.find_element(By.ID, "prompt").clear()
        seed.clear()
        seed.send_keys("-1")
        browser.find_element(By.CSS_SELECTOR, "#gallery .card button.reuse").click()
        assert browser.find_element(By.ID, "prompt").get_attribute("value") == "red apple <lora:shiny:0.5>"
        assert browser.find_element(By.ID, "seed").get_attribute("value") == "5"

        # a long run: the progress bar and the live preview move, and Interrupt stops it
        unet = server.app.state.engine.pipe.unet
        forward = unet.forward

        def slow(*a, **kw):
            import time

            time.sleep(0.03)
            return forward(*a, **kw)

        monkeypatch.setattr(unet, "forward", slow)
        steps.clear()
        steps.send_keys("150")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "preview").is_displayed())
        wait.until(lambda d: d.execute_script("return parseFloat(document.querySelector('#bar div').style.width) > 0"))
        assert "step " in browser.find_element(By.ID, "status").text
        browser.find_element(By.ID, "interrupt").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "(interrupted)"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery .card img")) == 2
        assert not browser.find_element(By.ID, "preview").is_displayed()

        shot = tmp_path / "webui.png"
        assert browser.save_screenshot(str(shot))
        if os.environ.get("LATENTDIFF_WEBUI_SCREENSHOT"):
            shutil.copy(shot, os.environ["LATENTDIFF_WEBUI_SCREENSHOT"])
        assert Image.open(shot).size[0] > 0
    finally:
        server.close()
