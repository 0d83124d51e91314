"""The page in a real browser: ``bts-serve`` on a free loopback port, Debian's headless Chromium
driven by Selenium through Debian's ``chromedriver`` (nothing downloads a browser).

Uploads a synthetic BraTS case through the page, waits for the viewer, moves a slider, toggles
a region, takes a screenshot (kept at ``$BTS_SCREENSHOT``, else in the test's temporary folder)
and checks the tumour's colours are on it. Uploads a volume whose only bright blob lies in the
patient's right hemisphere and checks the page draws it on the side it letters R, and that
clicking it moves the other two planes to the blob's voxel. Skips when Chromium, its driver or Selenium is
missing, except under ``CI=true``, where it must run (``scripts/install_browser.sh`` installs them).
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import CASE, RIGHT_BLOB_CENTRE, RIGHT_BLOB_SHAPE, write_right_blob_nifti

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (run scripts/install_browser.sh)"
    if not CHROMEDRIVER.exists():
        return f"{CHROMEDRIVER} is missing (Debian package chromium-driver; run scripts/install_browser.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser test must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server_process(
    browser_ready: None, brats_ckpt: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen]:
    """``bts-serve`` started in a subprocess on a free port (``--port 0``), stopped with Ctrl+C."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    workdir = tmp_path_factory.mktemp("serve") / "jobs"
    cmd = [sys.executable, "-m", "bts_monai.cli.serve", "--ckpt", str(brats_ckpt), "--port", "0"]
    cmd += ["--workdir", str(workdir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "bts-serve did not stop cleanly on Ctrl+C"
    assert not workdir.exists() or not any(workdir.iterdir()), "job files left behind after exit"


@pytest.fixture(scope="module")
def server(server_process: subprocess.Popen, driver: object) -> str:
    """The address ``bts-serve`` prints (the browser starts while the server imports)."""
    lines = []
    assert server_process.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = server_process.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        if m:
            # Keep reading its log so a full pipe never blocks the server.
            threading.Thread(target=lambda: [None for _ in server_process.stdout], daemon=True).start()
            return m.group(1)
    pytest.fail("bts-serve did not print its address:\n" + "".join(lines))


@pytest.fixture(scope="module")
def driver(server_process: subprocess.Popen) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    opts.add_argument("--force-device-scale-factor=1")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


def _coloured_pixels(png: bytes, box: dict[str, float]) -> int:
    """Pixels of a screenshot region that are clearly coloured (MRI is grey, overlays are not)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
    rgb = np.asarray(img.crop((x, y, x + w, y + h))).astype(int)
    spread = rgb.max(-1) - rgb.min(-1)
    return int((spread > 40).sum())


def _src(driver, plane: str) -> str:
    return driver.find_element("css selector", f".plane[data-plane={plane}] img").get_attribute("src")


def _loaded(driver, plane: str) -> bool:
    """The plane shows the image it last asked for."""
    script = (
        "const i = document.querySelector(arguments[0]);"
        "return i.complete && i.naturalWidth > 0 && i.dataset.loaded === i.getAttribute('src');"
    )
    return bool(driver.execute_script(script, f".plane[data-plane={plane}] img"))


def test_upload_view_and_screenshot(server: str, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from bts_monai.data.synthetic import make_brats_case

    case_dir = make_brats_case(tmp_path / "cases", CASE, shape=(64, 64, 48), seed=5)
    files = [str(case_dir / f"{CASE}_{m}.nii.gz") for m in ("flair", "t1", "t1ce", "t2")]
    wait = WebDriverWait(driver, 90, poll_frequency=0.1)

    driver.get(server)
    wait.until(lambda d: "Model" in d.find_element(By.ID, "model-info").text)
    driver.find_element(By.ID, "file-input").send_keys("\n".join(files))
    wait.until(lambda d: d.find_element(By.ID, "viewer").is_displayed())
    wait.until(lambda d: all(_loaded(d, p) for p in ("axial", "coronal", "sagittal")))
    assert driver.find_element(By.ID, "case-name").text == CASE

    # Move the axial slider two slices, with the keyboard as a user would.
    first = _src(driver, "axial")
    slider = driver.find_element(By.CSS_SELECTOR, ".plane[data-plane=axial] .slider")
    start = int(slider.get_attribute("value"))
    slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    wait.until(lambda d: int(slider.get_attribute("value")) == start + 2 and _src(d, "axial") != first)
    wait.until(lambda d: _loaded(d, "axial"))
    assert driver.find_element(By.CSS_SELECTOR, ".plane[data-plane=axial] .index").text.startswith(f"{start + 3} / ")

    # Toggle a region off (the slices are drawn without it), then on again.
    et = driver.find_element(By.CSS_SELECTOR, "#layers input[data-layer=ET]")
    with_et = _src(driver, "axial")
    et.click()
    wait.until(lambda d: "ET" not in re.search(r"layers=([^&]*)", _src(d, "axial")).group(1))
    wait.until(lambda d: _loaded(d, "axial"))
    et.click()
    wait.until(lambda d: _src(d, "axial") == with_et and _loaded(d, "axial"))

    wait.until(lambda d: all(_loaded(d, p) for p in ("axial", "coronal", "sagittal")))
    png = driver.get_screenshot_as_png()
    shot = Path(os.environ.get("BTS_SCREENSHOT") or tmp_path / "serve.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(png)

    for plane in ("axial", "coronal", "sagittal"):
        box = driver.find_element(By.CSS_SELECTOR, f".plane[data-plane={plane}] .frame").rect
        assert _coloured_pixels(png, box) > 100, f"no tumour overlay visible in the {plane} plane"
    rows = driver.find_elements(By.CSS_SELECTOR, "#report tbody tr")
    assert any(r.text.startswith("WT") for r in rows)
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a")]
    assert any(h.endswith("/files/segmentation") for h in links)
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe


def test_bad_upload_shows_a_message(server: str, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / f"{CASE}_flair.nii.gz"
    bad.write_bytes(b"not a scan" * 50)
    driver.get(server)
    wait = WebDriverWait(driver, 60, poll_frequency=0.1)
    wait.until(lambda d: "Model" in d.find_element(By.ID, "model-info").text)
    driver.find_element(By.ID, "file-input").send_keys(str(bad))
    message = driver.find_element(By.ID, "message")
    wait.until(lambda d: message.is_displayed())
    assert bad.name in message.text and "Traceback" not in message.text
    assert driver.current_url == server  # the page stayed


def _bright_centre(png: bytes, level: int = 200, margin: int = 3) -> tuple[float, float] | None:
    """Centre (x, y), in an element screenshot's pixels, of its bright grey pixels; ``None`` when
    none. A margin is left out: the crop of an element at fractional coordinates takes in a pixel
    of the white page around it."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    inside = rgb[margin:-margin, margin:-margin]
    ys, xs = np.nonzero(inside.min(-1) >= level)
    return (float(xs.mean()) + margin + 0.5, float(ys.mean()) + margin + 0.5) if len(xs) else None


def _index(driver, plane: str) -> str:
    return driver.find_element("css selector", f".plane[data-plane={plane}] .index").text


def _letter_x(driver, plane: str, letter: str) -> float:
    """Page x of the centre of the edge letter ``letter`` around a plane."""
    spans = driver.find_elements("css selector", f".plane[data-plane={plane}] .ori")
    (span,) = [s for s in spans if s.text == letter]
    return span.rect["x"] + span.rect["width"] / 2


def test_right_hemisphere_is_lettered_r_and_clicks_find_the_voxel(server: str, driver, tmp_path: Path) -> None:
    """Radiological convention: the patient's right is on the image's left, lettered R; a click
    on the blob selects its voxel (a mirrored mapping would select the other hemisphere)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    path, blob = write_right_blob_nifti(tmp_path / "right_blob.nii.gz")
    x, y, z = RIGHT_BLOB_CENTRE
    nx, ny, nz = RIGHT_BLOB_SHAPE
    wait = WebDriverWait(driver, 90, poll_frequency=0.1)
    driver.get_log("browser")  # drop what earlier tests logged (the refused upload's 422)
    driver.get(server)
    wait.until(lambda d: "Model" in d.find_element(By.ID, "model-info").text)
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    # The page may be showing an earlier case (it stays open): open this one from the list.
    # (In one script: the list is redrawn on every poll, so a found element soon goes stale.)
    open_job = (
        "const li = [...document.querySelectorAll('#job-list li[data-state=done]')]"
        ".find((l) => l.querySelector('.name').textContent === arguments[0]);"
        "if (li) li.click(); return Boolean(li);"
    )
    wait.until(lambda d: d.execute_script(open_job, "right_blob"))
    wait.until(lambda d: d.find_element(By.ID, "viewer").is_displayed())
    wait.until(lambda d: d.find_element(By.ID, "case-name").text == "right_blob")
    wait.until(lambda d: all(_loaded(d, p) for p in ("axial", "coronal", "sagittal")))

    # Grey slices only (no overlays, no crosshair), so the blob is the only bright thing drawn.
    if driver.find_element(By.ID, "crosshair").is_selected():
        driver.find_element(By.ID, "crosshair").click()
    for box in driver.find_elements(By.CSS_SELECTOR, "#layers input"):
        if box.is_selected():
            box.click()
    # The axial plane through the blob; the other two planes far from it.
    for plane, index in (("axial", z), ("coronal", 0), ("sagittal", 0)):
        slider = driver.find_element(By.CSS_SELECTOR, f".plane[data-plane={plane}] .slider")
        slider.send_keys(Keys.HOME, *[Keys.ARROW_RIGHT] * index)
    wait.until(lambda d: _index(d, "axial") == f"{z + 1} / {nz}" and _index(d, "sagittal") == f"1 / {nx}")
    wait.until(lambda d: _index(d, "coronal") == f"1 / {ny}")
    wait.until(lambda d: all(_loaded(d, p) and "layers=&" in _src(d, p) for p in ("axial", "coronal", "sagittal")))

    axial = driver.find_element(By.CSS_SELECTOR, ".plane[data-plane=axial] .frame")
    centre = _bright_centre(axial.screenshot_as_png)
    assert centre is not None, "the blob is not drawn in the axial plane through it"
    rect = axial.rect
    blob_x = rect["x"] + centre[0]
    mid = rect["x"] + rect["width"] / 2
    r_x, l_x = _letter_x(driver, "axial", "R"), _letter_x(driver, "axial", "L")
    assert (blob_x - mid) * (r_x - mid) > 0 and abs(blob_x - r_x) < abs(blob_x - l_x), (
        f"the right-hemisphere blob is drawn at x={blob_x:.0f}, nearer L ({l_x:.0f}) than R ({r_x:.0f})"
    )
    for plane in ("coronal", "sagittal"):  # far from the blob: nothing bright
        frame = driver.find_element(By.CSS_SELECTOR, f".plane[data-plane={plane}] .frame")
        assert _bright_centre(frame.screenshot_as_png) is None, plane

    # Click the blob's centre: the coronal plane moves to its y, the sagittal plane to its x.
    offset = (round(centre[0] - rect["width"] / 2), round(centre[1] - rect["height"] / 2))
    ActionChains(driver).move_to_element_with_offset(axial, *offset).click().perform()
    want = (f"{x + 1} / {nx}", f"{y + 1} / {ny}")
    wait.until(lambda d: (_index(d, "sagittal"), _index(d, "coronal")) == want, f"the click did not select {x, y, z}")
    assert _index(driver, "axial") == f"{z + 1} / {nz}"
    wait.until(lambda d: all(_loaded(d, p) for p in ("axial", "coronal", "sagittal")))
    coronal = driver.find_element(By.CSS_SELECTOR, ".plane[data-plane=coronal] .frame")
    seen = _bright_centre(coronal.screenshot_as_png)
    assert seen is not None, "the coronal plane does not show the blob after the click"
    cx = coronal.rect["x"] + seen[0]
    assert abs(cx - _letter_x(driver, "coronal", "R")) < abs(cx - _letter_x(driver, "coronal", "L"))
    sagittal = driver.find_element(By.CSS_SELECTOR, ".plane[data-plane=sagittal] .frame")
    assert _bright_centre(sagittal.screenshot_as_png) is not None, "the sagittal plane missed the blob"
    assert blob[x, y, z] and not blob[nx - 1 - x, y, z]  # the mirrored voxel is not in the blob
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe
