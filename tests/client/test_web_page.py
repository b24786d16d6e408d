"""The web page at ``/``, in a real headless Chromium (Debian's, driven by playwright) against a real server."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from featureserve.client import RestClient
from tests.conftest import Server, start_server

# Debian's chromium package; scripts/install.sh installs it (apt-get, as root) when the test extra is installed.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# This machine's network is closed: without these, Chromium keeps trying to reach Google's services.
# playwright adds --headless and a fresh --user-data-dir of its own.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            "Debian's chromium is not installed and could not be: scripts/install.sh test installs it with "
            "apt-get when it runs as root with the Debian archive reachable"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_the_page_is_served_with_no_outside_resources(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'href="/docs"' in page and "/v1/match" in page and "/v1/models" in page
    assert "http://" not in page and "https://" not in page  # no CDN: it works on a closed network


def test_matching_two_images_in_the_browser(
    browser: object, server: Server, image_files: list[Path], rest: RestClient, tmp_path: Path
) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    failed_requests: list[str] = []
    page.on("requestfailed", lambda request: failed_requests.append(request.url))
    page.goto(server.url + "/")
    assert page.title().startswith("featureserve")
    assert page.get_attribute("a[href='/docs']", "href") == "/docs"
    page.wait_for_selector("#model option[value='orb']", state="attached")
    assert page.locator("#model").input_value() == "sift"  # the server's default model is preselected

    assert page.locator("#geometry").input_value() == "none"  # the API's default
    page.click("#submit")  # nothing chosen yet
    assert page.text_content("#error") == "choose two images first"

    page.set_input_files("#image0", str(image_files[0]))
    page.set_input_files("#image1", str(image_files[1]))
    page.select_option("#model", "orb")
    page.select_option("#geometry", "homography")
    page.fill("#max_keypoints", "1000")
    page.fill("#draw_max_lines", "50")
    page.check("#draw_inliers_only")
    # The busy indicator shows while the request runs (recorded by an observer: the answer may come quickly).
    page.evaluate(
        """() => { window.sawBusy = false; const busy = document.getElementById("busy");
        new MutationObserver(() => { if (!busy.hidden) window.sawBusy = true; }).observe(busy, {attributes: true}); }"""
    )
    page.click("#submit")
    page.wait_for_selector("#result", state="visible", timeout=60_000)
    assert page.evaluate("window.sawBusy") and page.locator("#busy").is_hidden()

    options = {"model": "orb", "geometry": "homography", "max_keypoints": 1000}
    expected = rest.match(*image_files, draw=True, draw_max_lines=50, draw_outliers=False, **options)
    # The page drew with its limits: the picture is the API's for the same options, byte for byte.
    shown = page.get_attribute("#drawing", "src")
    assert shown == "data:image/png;base64," + base64.b64encode(expected.drawing).decode()
    assert page.text_content("#num-matches") == str(len(expected.matches))
    assert page.text_content("#num-inliers") == str(expected.geometry.num_inliers)
    assert page.text_content("#num-keypoints") == f"{expected.num_keypoints0} / {expected.num_keypoints1}"
    assert page.text_content("#round-trip").endswith(" ms")
    assert page.text_content("#server-timing").count(" ms") == 3  # extract / match / draw
    # The picture arrived and was decoded by the browser: two 512 px images side by side plus the caption.
    size = page.eval_on_selector("#drawing", "img => [img.complete, img.naturalWidth, img.naturalHeight]")
    assert size == [True, 512 + 8 + 512, 26 + 512]
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert not failed_requests and page.text_content("#error") == ""

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    page.set_input_files("#image0", str(not_an_image))  # the service's error is shown
    page.click("#submit")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert page.text_content("#error").startswith("400 invalid_input: image0: ")
    assert page.locator("#result").is_hidden()  # the earlier answer does not stay under the error
    page.close()


def test_the_page_sends_the_api_key_it_is_given(browser: object, image_files: list[Path]) -> None:
    keyed = start_server(models='["orb"]', default_model="orb", api_keys='["page-key-0123456789"]', warmup="false")
    try:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(keyed.url + "/")  # the page itself is open: it holds no data
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert page.text_content("#error").startswith("401 unauthenticated: ")
        page.fill("#api_key", "page-key-0123456789")
        page.press("#api_key", "Tab")  # leaving the field fires its change event: the models are listed again
        page.wait_for_selector("#model option[value='orb']", state="attached")
        page.set_input_files("#image0", str(image_files[0]))
        page.set_input_files("#image1", str(image_files[1]))
        page.click("#submit")
        page.wait_for_function(
            "!document.getElementById('result').hidden || document.getElementById('error').textContent", timeout=60_000
        )
        assert page.text_content("#error") == "" and int(page.text_content("#num-matches")) > 0
        page.close()
    finally:
        keyed.stop()


def test_swagger_ui_renders_offline_and_tries_a_call(browser: object, server: Server) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    outside: list[str] = []

    def only_this_server(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(server.url):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    page.route("**/*", only_this_server)
    page.goto(server.url + "/docs")
    page.wait_for_selector("#operations-models-list_models_v1_models_get", timeout=30_000)
    page.click("#operations-models-list_models_v1_models_get .opblock-summary")
    page.click("#operations-models-list_models_v1_models_get .try-out__btn")
    page.click("#operations-models-list_models_v1_models_get .execute")
    page.wait_for_selector(
        "#operations-models-list_models_v1_models_get .live-responses-table tbody .response-col_status"
    )
    status = page.text_content(
        "#operations-models-list_models_v1_models_get .live-responses-table tbody .response-col_status"
    )
    assert status.strip() == "200"
    assert '"default_model"' in page.text_content("#operations-models-list_models_v1_models_get .live-responses-table")
    page.goto(server.url + "/redoc")
    page.wait_for_selector("text=Match two images", state="attached", timeout=30_000)
    assert not outside, outside
    page.close()
