"""The operator web page of ``padim serve`` in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): pick images, see OK/NG, score, probability and the heatmap;
the screenshot is checked by its pixels."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

import test_serve
from test_serve import data, httpx, model_path, scored, served_export, server, upload  # noqa: F401 - fixtures (and skips)

pytest.importorskip("selenium")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                 reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"),
              test_serve.pytestmark]  # the fixtures' expected warnings
LABEL_COLOURS = {"OK": (0x1E, 0x8E, 0x3E), "NG": (0xD9, 0x30, 0x25)}  # index.html's badge colours


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,2200", "--force-device-scale-factor=1",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def crop(screenshot: np.ndarray, element) -> np.ndarray:
    r = element.rect
    x0, y0 = int(round(r["x"])), int(round(r["y"]))
    return screenshot[y0:y0 + int(r["height"]), x0:x0 + int(r["width"]), :3]


def test_operator_page_shows_label_score_probability_and_heatmap(browser, server, scored, data, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    names = ["b_blob.png", "a_good.png"]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    expected = {n: httpx.post(server.url + "/predict", files={"file": upload(data["inputs"] / n)}, timeout=60).json()
                for n in names}

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "efficientnet_lite0" in d.find_element(By.ID, "model").text)
    picker = browser.find_element(By.ID, "files")
    picker.send_keys("\n".join(str(p) for p in [data["inputs"] / n for n in names] + [notes]))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-state]")) == 3)

    for name in names:
        card = browser.find_element(By.CSS_SELECTOR, f'.card[data-filename="{name}"]')
        assert card.get_attribute("data-state") == "done", card.text
        result, (score, probability, label) = expected[name], scored["rows"][name]
        assert card.find_element(By.CSS_SELECTOR, ".label").text == label == result["label"]
        shown_score = float(card.find_element(By.CSS_SELECTOR, ".score").text.split()[1])  # 4 digits
        assert shown_score == pytest.approx(score, rel=1e-3)
        shown_p = float(card.find_element(By.CSS_SELECTOR, ".probability").text.split()[1])
        assert shown_p == pytest.approx(probability, abs=1e-3)
        image = card.find_element(By.CSS_SELECTOR, "img.heatmap")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        served = Image.open(io.BytesIO(httpx.post(server.url + "/heatmap", files={"file": upload(data["inputs"] / name)},
                                                  timeout=60).content))
        assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image) \
            == list(served.size)
    failed = browser.find_element(By.CSS_SELECTOR, '.card[data-filename="notes.txt"]')
    assert failed.get_attribute("data-state") == "error" and "400" in failed.text and "notes.txt" in failed.text

    shot_path = tmp_path / "operator_page.png"
    browser.save_screenshot(str(shot_path))
    shot = np.asarray(Image.open(shot_path).convert("RGB")).astype(np.int32)
    for name in names:  # both cards lie inside the (tall) window
        card = browser.find_element(By.CSS_SELECTOR, f'.card[data-filename="{name}"]')
        heat = crop(shot, card.find_element(By.CSS_SELECTOR, "img.heatmap"))
        assert heat.shape[0] > 100 and heat.shape[1] > 200, f"{name}: heatmap not inside the screenshot"
        assert heat.std() > 20, f"{name}: heatmap region is blank"
        r, b = heat[..., 0], heat[..., 2]
        jet = ((b > 150) & (r < 100)) | ((r > 180) & (b < 100))  # the map's blue or red overlay
        assert jet.mean() > 0.02, f"{name}: no anomaly-map colours in the heatmap region"
        badge = crop(shot, card.find_element(By.CSS_SELECTOR, ".label"))
        label = card.find_element(By.CSS_SELECTOR, ".label").text
        colour = np.median(badge.reshape(-1, 3), axis=0)
        assert np.abs(colour - LABEL_COLOURS[label]).max() <= 12, (name, label, colour)


def test_operator_page_serves_an_export(browser, served_export, data):
    """The page of ``padim serve model.onnx``: the model line (an export has no training-set size)
    and a result as ``padim score`` of the export gives it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv = served_export["server"]
    browser.get(srv.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "export" in d.find_element(By.ID, "model").text)
    shown = browser.find_element(By.ID, "model").text
    info = httpx.get(srv.url + "/model", timeout=10).json()
    assert info["whole-image check"]  # the page shows the export's check too
    assert shown == (f"{info['backbone']} ({info['format']} export), input "
                     f"{'×'.join(map(str, info['input size (h, w)']))}; calibration: {info['calibration']}"
                     f"; whole-image check: {info['whole-image check']}")
    browser.find_element(By.ID, "files").send_keys(str(data["inputs"] / "b_blob.png"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.card[data-filename="b_blob.png"][data-state="done"]'))
    card = browser.find_element(By.CSS_SELECTOR, '.card[data-filename="b_blob.png"]')
    score, _, label = served_export["rows"]["b_blob.png"]
    assert card.find_element(By.CSS_SELECTOR, ".label").text == label == "NG"
    assert float(card.find_element(By.CSS_SELECTOR, ".score").text.split()[1]) == pytest.approx(score, rel=1e-3)



def test_operator_page_shows_why_a_score_may_be_off(browser, server, data):
    """An upload of another aspect ratio gets its warning under the numbers; a good one none."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "efficientnet_lite0" in d.find_element(By.ID, "model").text)
    names = ["c_wide.png", "a_good.png"]
    browser.find_element(By.ID, "files").send_keys("\n".join(str(data["inputs"] / n) for n in names))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.card[data-state="done"]')) == 2)
    shown = {n: [w.text for w in browser.find_element(By.CSS_SELECTOR, f'.card[data-filename="{n}"]')
                 .find_elements(By.CSS_SELECTOR, ".warning")] for n in names}
    assert shown == {"c_wide.png": [f"warning: {test_serve.ASPECT_WARNING}"], "a_good.png": []}
