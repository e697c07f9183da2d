"""The web UI screenshot in docs/: `latentdiff serve` with the built-in emoji model, driven by headless
Chromium (Debian's chromium + chromium-driver) through selenium, four images generated.

    python benchmarks/webui_screenshot.py --out docs/images/webui.png
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile


def main(argv=None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/images/webui.png")
    p.add_argument("--model", default="emoji")
    p.add_argument("--prompt", default="red apple")
    args = p.parse_args(argv)

    server = subprocess.Popen([sys.executable, "-m", "latentdiff.cli", "serve", "--model", args.model, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    profile = tempfile.TemporaryDirectory()
    driver = None
    try:
        url = re.search(r"(http://\S+/)", server.stdout.readline()).group(1)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile.name}", "--window-size=1200,760"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        wait = WebDriverWait(driver, 120)
        for _ in range(200):  # uvicorn starts serving just after the line is printed
            try:
                driver.get(url)
                break
            except Exception:
                import time

                time.sleep(0.1)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "sampler")).options) > 1)
        driver.find_element(By.ID, "prompt").send_keys(args.prompt)
        for field, value in (("seed", "3"), ("batch", "4")):
            el = driver.find_element(By.ID, field)
            el.clear()
            el.send_keys(value)
        driver.find_element(By.ID, "generate").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#gallery .card img")))
        wait.until(lambda d: d.find_element(By.ID, "generate").is_enabled())
        driver.save_screenshot(args.out)
        print(args.out)
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
        profile.cleanup()


if __name__ == "__main__":
    main()
