"""The viewer page at `/` in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium), against a real `chextriev demo` server on the demo gallery.

Screenshots go to var/screenshots/ (README shows two of them). The tests skip only when no browser is
installed; `.ci/run` installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.dicom_factory import dicom_bytes
from tests.service.server_process import REPO_ROOT, REQUEST_TIMEOUT_SECONDS, Server, free_port, wait_until_ready
from trainer.demo.samples import load_sample_cases, sample_case_input

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no browser: the viewer page's tests need Debian's chromium and chromium-driver "
           "(apt-get install chromium chromium-driver; .ci/run installs them)")

SCREENSHOTS = REPO_ROOT / "var" / "screenshots"
DESKTOP, TABLET = (1280, 800), (820, 1180)
WAIT_SECONDS = 60
QUERY_SAMPLE = 5  # a bundled radiograph, written as a 12-bit DICOM


@pytest.fixture(scope="module")
def demo_server(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`chextriev demo` serving the built demo gallery on a free port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("viewer") / "server.log"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("CHEXTRIEV_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "demo", "--work-dir", str(demo_dir), "--port", str(port)],
            cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
            wait_until_ready(server, client)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium at 1280 x 800, its console log kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: webdriver.Chrome, demo_server: Server) -> webdriver.Chrome:
    """The viewer page freshly loaded at the desktop size."""
    browser.set_window_size(*window_for(browser, DESKTOP))
    browser.get(demo_server.base_url + "/")
    browser.get_log("browser")  # start each test with an empty console log
    return browser


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundled radiograph written as a 12-bit CR chest PA DICOM."""
    pixels, _ = sample_case_input(load_sample_cases()[QUERY_SAMPLE])
    path = tmp_path_factory.mktemp("upload") / "chest.dcm"
    path.write_bytes(dicom_bytes(np.round(pixels * 4095).astype(np.uint16), bits_stored=12))
    return path


def window_for(driver: webdriver.Chrome, viewport: tuple[int, int]) -> tuple[int, int]:
    """The window size whose viewport is `viewport` (headless windows have no frame, but be exact)."""
    driver.set_window_size(*viewport)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    return viewport[0] + viewport[0] - inner[0], viewport[1] + viewport[1] - inner[1]


def wait_for(driver: webdriver.Chrome, condition, what: str):
    try:
        return WebDriverWait(driver, WAIT_SECONDS).until(lambda _: condition())
    except TimeoutException:
        screenshot(driver, "failure")
        raise AssertionError(f"timed out waiting for {what}; status: {status_text(driver)!r}, "
                             f"error: {driver.find_element(By.ID, 'error').text!r}") from None


def status_text(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.ID, "status").text


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def query_boxes(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#query-boxes g.region")


def upload(driver: webdriver.Chrome, path: Path) -> None:
    driver.find_element(By.ID, "image-input").send_keys(str(path))


def upload_and_find_regions(driver: webdriver.Chrome, path: Path) -> None:
    upload(driver, path)
    wait_for(driver, lambda: len(query_boxes(driver)) == 18 and "18 regions found" in status_text(driver),
             "the 18 region boxes")


def results(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#results button.result")


def saliency_shown(driver: webdriver.Chrome) -> bool:
    image_ready = driver.execute_script(
        "const image = document.getElementById('saliency-image');"
        "return image.complete && image.naturalWidth > 0 && !document.getElementById('detail-panel').hidden")
    rows = driver.find_elements(By.CSS_SELECTOR, "#region-table tbody tr")
    boxes = driver.find_elements(By.CSS_SELECTOR, "#saliency-boxes g.region")
    return image_ready and len(rows) == 18 and len(boxes) == 18


def images_without_alt(driver: webdriver.Chrome) -> list[str]:
    return driver.execute_script(
        "return [...document.images].filter((image) => image.offsetParent !== null && !image.alt.trim())"
        ".map((image) => image.src)")


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """Errors in the console: a script error, or a request the Content-Security-Policy blocked."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def horizontal_overflow(driver: webdriver.Chrome) -> int:
    return driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")


def exposed_box(driver: webdriver.Chrome) -> tuple[WebElement, bool]:
    """A query box whose centre no other box covers, and whether it lies left of the image's middle."""
    box, left_half = driver.execute_script("""
        const stage = document.getElementById('query-stage').getBoundingClientRect();
        for (const group of document.querySelectorAll('#query-boxes g.region')) {
            const rect = group.querySelector('rect.box').getBoundingClientRect();
            const [x, y] = [rect.left + rect.width / 2, rect.top + rect.height / 2];
            const middle = stage.left + stage.width / 2;
            if (document.elementFromPoint(x, y)?.closest('g') === group) return [group, x < middle];
        }
        return [null, false];""")
    assert box is not None, "every box's centre is covered by another box"
    return box, left_half


def box_label(box: WebElement) -> str:
    return box.get_attribute("aria-label")


def test_page_is_served_with_a_policy_that_allows_only_this_service(demo_server: Server):
    with httpx.Client(base_url=demo_server.base_url) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "http" not in policy
        assert client.get("/static/app.js").headers["content-security-policy"] == policy
        assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
        assert client.get("/docs").status_code == 200


def test_upload_a_dicom_correct_a_box_search_and_see_the_saliency(page: webdriver.Chrome, dicom_file: Path):
    upload_and_find_regions(page, dicom_file)
    assert page.find_element(By.ID, "query-image").get_attribute("alt").startswith("The query radiograph chest.dcm")

    # drag a box 20 screen pixels towards the middle of the image: the search then sends the boxes
    box, towards_right = exposed_box(page)
    before = box_label(box)
    step = 20 if towards_right else -20
    ActionChains(page).move_to_element(box.find_element(By.CSS_SELECTOR, "rect.box")).click_and_hold() \
        .move_by_offset(step, 0).release().perform()
    x_before, x_after = (int(label.split(": x ")[1].split(" ")[0]) for label in (before, box_label(box)))
    assert (x_after - x_before) * step > 0, (before, box_label(box))
    assert "corrected by hand" in page.find_element(By.ID, "boxes-source").text
    screenshot(page, "viewer-query")

    page.find_element(By.ID, "search-button").click()
    wait_for(page, lambda: len(results(page)) == 5, "5 results")
    summary = page.find_element(By.ID, "search-summary").text
    assert "5 similar cases" in summary and "the boxes sent" in summary
    first = results(page)[0]
    assert "similarity" in first.text and first.text.startswith("1. cxrlb-")

    first.click()
    wait_for(page, lambda: saliency_shown(page), "the saliency view")
    verdict = page.find_element(By.ID, "saliency-verdict").text
    assert verdict.startswith("No region stands out") or "regions stand out" in verdict
    assert page.find_element(By.ID, "roi-used").text == "Search over the whole image (no regions of interest)."
    assert len(page.find_elements(By.CSS_SELECTOR, "#detail-query-boxes g.region")) == 18  # the query beside it
    drops = [float(row.find_elements(By.TAG_NAME, "td")[2].text)
             for row in page.find_elements(By.CSS_SELECTOR, "#region-table tbody tr")]
    assert drops == sorted(drops, reverse=True)

    # hovering a region of the case shows its name and drop
    case_box = page.find_elements(By.CSS_SELECTOR, "#saliency-boxes g.region rect")[-1]
    ActionChains(page).move_to_element(case_box).perform()
    tooltip = page.find_element(By.ID, "tooltip")
    wait_for(page, lambda: tooltip.is_displayed() and "similarity drop" in tooltip.text, "the hover's text")
    page.execute_script("document.getElementById('detail-panel').scrollIntoView()")
    screenshot(page, "viewer-saliency")
    assert images_without_alt(page) == []
    assert horizontal_overflow(page) <= 0
    assert console_errors(page) == []

    # a tablet-sized window: one column, nothing wider than the screen
    page.set_window_size(*window_for(page, TABLET))
    panels = {name: page.find_element(By.ID, name).rect for name in ("query-panel", "results-panel", "detail-panel")}
    assert panels["results-panel"]["y"] >= panels["query-panel"]["y"] + panels["query-panel"]["height"]
    assert horizontal_overflow(page) <= 0
    page.execute_script("document.getElementById('results-panel').scrollIntoView()")
    screenshot(page, "viewer-tablet")


def test_a_search_restricted_to_regions_of_interest_says_which_it_used(page: webdriver.Chrome, dicom_file: Path):
    upload_and_find_regions(page, dicom_file)
    page.find_element(By.CSS_SELECTOR, "#roi-list input[value='right lower lung zone']").click()
    page.find_element(By.ID, "search-button").click()
    wait_for(page, lambda: len(results(page)) == 5, "5 results")
    results(page)[0].click()
    wait_for(page, lambda: saliency_shown(page), "the saliency view")
    assert page.find_element(By.ID, "roi-used").text == \
        "Search restricted to the regions of interest: right lower lung zone."
    assert len(page.find_elements(By.CSS_SELECTOR, "#detail-query-boxes g.region.roi")) == 1
    assert console_errors(page) == []


def test_layout_at_1280_by_800_puts_results_beside_the_query(page: webdriver.Chrome):
    query, found = (page.find_element(By.ID, name).rect for name in ("query-panel", "results-panel"))
    assert found["x"] >= query["x"] + query["width"] and found["y"] == pytest.approx(query["y"], abs=2)
    assert horizontal_overflow(page) <= 0


def test_an_invalid_file_shows_the_error_in_words(page: webdriver.Chrome, tmp_path: Path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are a radiologist's notes, not an image\n")
    upload(page, notes)
    error = page.find_element(By.ID, "error")
    wait_for(page, error.is_displayed, "the error message")
    assert "notes.png cannot be used" in error.text
    assert "not a DICOM, PNG or JPEG image" in error.text
    assert error.get_attribute("role") == "alert"
    assert not page.find_element(By.ID, "search-button").is_enabled()
    screenshot(page, "viewer-invalid-file")


def test_keyboard_alone_reaches_and_opens_the_results(page: webdriver.Chrome, dicom_file: Path):
    upload_and_find_regions(page, dicom_file)  # a file chooser is the one step a script cannot type
    page.execute_script("document.activeElement.blur()")

    def tab_to(matches, what: str, limit: int = 80) -> WebElement:
        for _ in range(limit):
            ActionChains(page).send_keys(Keys.TAB).perform()
            focused = page.switch_to.active_element
            if matches(focused):
                return focused
        raise AssertionError(f"{what} not reached with {limit} presses of Tab")

    box = tab_to(lambda element: (box_label(element) or "").startswith("right lung:"), "a region box")
    outline = page.execute_script("return getComputedStyle(arguments[0]).outlineStyle", box)
    assert outline != "none"  # focus is visible
    before = box_label(box)
    ActionChains(page).send_keys(Keys.ARROW_RIGHT).perform()
    assert box_label(box) != before  # the arrow keys move a box

    search = tab_to(lambda element: element.get_attribute("id") == "search-button", "the search button")
    search.send_keys(Keys.ENTER)
    wait_for(page, lambda: len(results(page)) == 5, "5 results")
    active = tab_to(lambda element: "result" in (element.get_attribute("class") or "").split(), "a result", 5)
    assert page.execute_script("return getComputedStyle(arguments[0]).outlineStyle", active) != "none"
    active.send_keys(Keys.ENTER)
    wait_for(page, lambda: saliency_shown(page), "the saliency view")
    assert page.switch_to.active_element.get_attribute("id") == "detail-panel"
    screenshot(page, "viewer-keyboard")


def test_start_from_a_gallery_case_with_its_scene_graph_boxes(page: webdriver.Chrome, demo_server: Server,
                                                              tmp_path: Path):
    page.find_element(By.CSS_SELECTOR, "#gallery summary").click()
    wait_for(page, lambda: len(page.find_elements(By.CSS_SELECTOR, "#gallery-list button")) > 1, "the gallery")
    choice = page.find_elements(By.CSS_SELECTOR, "#gallery-list button")[1]
    case_id = choice.text.strip()
    choice.click()
    wait_for(page, lambda: len(query_boxes(page)) == 18 and "18 regions found" in status_text(page),
             "the chosen case's regions")
    alt = page.find_element(By.ID, "query-image").get_attribute("alt")
    assert alt.startswith(f"The query radiograph {case_id}.png")

    stored = httpx.get(f"{demo_server.base_url}/cases/{case_id}").json()["regions"]
    corners = ("original_x1", "original_y1", "original_x2", "original_y2")
    graph = {"image_id": case_id, "objects": [{"bbox_name": region["name"], **dict(zip(corners, region["box"]))}
                                              for region in stored] + [{"bbox_name": "left clavicle", **dict(
                                                  zip(corners, (0, 0, 10, 10)))}]}
    scene_graph = tmp_path / "scene_graph.json"
    scene_graph.write_text(json.dumps(graph))
    page.find_element(By.ID, "boxes-input").send_keys(str(scene_graph))
    wait_for(page, lambda: "read from scene_graph.json" in page.find_element(By.ID, "boxes-source").text,
             "the boxes of the scene graph")
    shown = {box_label(box).split(":")[0]: box_label(box) for box in query_boxes(page)}
    assert len(shown) == 18  # the scene graph's object outside the 18 regions is left out
    x1, y1, x2, y2 = (round(value) for value in stored[0]["box"])
    assert shown[stored[0]["name"]].startswith(f"{stored[0]['name']}: x {x1} to {x2}, y {y1} to {y2}")

    page.find_element(By.ID, "search-button").click()
    wait_for(page, lambda: len(results(page)) == 5, "5 results")
    assert "the boxes sent" in page.find_element(By.ID, "search-summary").text
    assert results(page)[0].text.startswith(f"1. {case_id}")  # the case itself, with its own boxes
