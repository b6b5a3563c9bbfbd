"""The web page at /, driven in Debian's Chromium by Playwright against a real gateway and worker."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_stack import REPO, publish_ghost, serving, write_bundle

from media import png_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-output"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    with serving(tmp, [write_bundle(tmp / "bundles", "tiny", temperature=0.9)], VGS_DEFAULT_MODEL="tiny") as s:
        publish_ghost(s)
        yield s


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url + "/")
    page.wait_for_selector("#model option", state="attached")
    yield page
    context.close()
    assert not errors, errors


def wait_for_video(page, timeout_ms=60000) -> float:
    page.wait_for_selector("#videos video", timeout=timeout_ms)
    page.wait_for_function("() => { const v = document.querySelector('#videos video');"
                           " return v && v.readyState >= 1 && v.duration > 0; }", timeout=timeout_ms)
    return page.evaluate("document.querySelector('#videos video').duration")


def test_generate_a_class_conditional_video_and_watch_it_play(page):
    page.select_option("#model", "tiny")
    page.check("#mode-class")
    page.select_option("#class_label", label="three")
    page.click("#submit")
    page.wait_for_selector("#current[data-status='succeeded']", timeout=60000)
    assert wait_for_video(page) > 0
    video = page.locator("#videos video").first
    assert video.evaluate("v => v.loop && v.muted && getComputedStyle(v).imageRendering") == "pixelated"
    assert page.locator("#videos a[download]").first.get_attribute("href").startswith("http")
    assert "tokens/s" in page.locator("#videos figcaption").first.inner_text()
    assert page.locator("#progress").evaluate("p => p.value") == 1
    assert page.locator("#recent li").count() >= 1  # this browser's recent jobs
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "web_page.png"), full_page=True)


def test_upload_a_frame_for_frame_conditioning(page, tmp_path):
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[12:36, 20:44] = (240, 60, 200)
    path = tmp_path / "first.png"
    path.write_bytes(png_bytes(image))
    page.check("#mode-frames")
    assert page.is_visible("#frames-field") and not page.is_visible("#class-field")
    page.set_input_files("#cond_frames", str(path))
    page.wait_for_function("() => { const c = document.getElementById('frames-preview');"
                           " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                           " for (let i = 0; i < d.length; i += 4) if (d[i] > 100) return true; return false; }")
    page.click("#submit")
    page.wait_for_selector("#current[data-status='succeeded']", timeout=60000)
    assert wait_for_video(page) > 0


def test_a_bad_value_shows_the_error_next_to_its_field(page):
    page.check("#mode-unconditional")
    page.click("#settings summary")
    page.fill("#temperature", "0")
    page.click("#submit")
    error = page.locator("#temperature-error")
    error.wait_for(state="visible")
    assert "greater than 0" in error.inner_text()
    assert page.get_attribute("#temperature", "aria-invalid") == "true"
    page.check("#mode-frames")
    page.click("#submit")  # no file chosen
    assert "Choose an image" in page.locator("#cond_frames-error").inner_text()


def test_guidance_and_temperature_follow_the_model_and_reach_the_job(page, stack):
    page.select_option("#model", "tiny")
    page.check("#mode-unconditional")
    page.click("#settings summary")
    assert not page.is_visible("#guidance")  # guidance has nothing to steer towards without a condition
    page.check("#mode-class")
    assert page.is_visible("#guidance") and page.get_attribute("#guidance", "placeholder") == "2"
    assert page.get_attribute("#temperature", "placeholder") == "0.9"  # the model's, sent when left empty
    page.fill("#guidance", "4")
    page.click("#submit")
    page.wait_for_selector("#current[data-status='succeeded']", timeout=60000)
    job_id = page.evaluate("JSON.parse(localStorage.getItem('vgs.recentJobs') || '[]')[0]")
    request = httpx.get(f"{stack.url}/v1/jobs/{job_id}").json()["request"]
    assert (request["guidance"], request["temperature"]) == (4, 0.9)


def test_frames_field_follows_the_model_and_makes_a_longer_video(page, stack):
    page.select_option("#model", "tiny")
    frames = page.locator("#num_frames")
    assert frames.is_visible()
    # tiny: 4 frames natively, 2 per latent step, up to 8x as long (VGS_MAX_FRAMES' default).
    assert frames.evaluate("e => [e.value, e.min, e.max, e.step]") == ["4", "2", "32", "2"]
    assert "up to 32" in page.inner_text("#num_frames-help")
    page.check("#mode-class")
    page.fill("#num_frames", "16")
    page.click("#submit")
    page.wait_for_selector("#current[data-status='succeeded']", timeout=60000)
    assert wait_for_video(page) == pytest.approx(16 / 4.0, abs=0.3)  # 16 frames at 4 fps
    assert "16 frames" in page.locator("#videos figcaption").first.inner_text()
    job_id = page.evaluate("JSON.parse(localStorage.getItem('vgs.recentJobs') || '[]')[0]")
    job = httpx.get(f"{stack.url}/v1/jobs/{job_id}").json()
    assert job["request"]["num_frames"] == 16 and job["outputs"][0]["frames"] == 16
    page.select_option("#model", "ghost")  # another model: the field takes its lengths
    assert frames.evaluate("e => [e.value, e.max]") == ["4", "4"]
    assert "this model's length" in page.inner_text("#num_frames-help")


def test_a_bad_length_shows_its_error_next_to_the_frames_field(page, stack):
    client = stack.redis.client()
    jobs_before = len(list(client.scan_iter("vgs:job:*")))
    page.select_option("#model", "tiny")
    page.check("#mode-unconditional")
    page.fill("#num_frames", "7")
    page.click("#submit")
    error = page.locator("#num_frames-error")
    error.wait_for(state="visible")
    assert "num_frames must be a multiple of 2 from 2 to 32 for model 'tiny'" in error.inner_text()
    assert page.get_attribute("#num_frames", "aria-invalid") == "true"
    assert page.inner_text("#form-error") == ""
    assert len(list(client.scan_iter("vgs:job:*"))) == jobs_before


def test_cancel_a_job(page):
    page.select_option("#model", "ghost")  # no worker serves it: the job waits in the queue
    page.click("#submit")
    page.wait_for_selector("#current[data-status='queued']")
    assert "no worker serving model 'ghost' is up" in page.inner_text("#job-warnings")
    page.click("#cancel")
    page.wait_for_selector("#current[data-status='canceled']")
    assert "canceled" in page.inner_text("#status-line")


def test_labelled_controls_keyboard_and_phone_width(browser, stack):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto(stack.url + "/")
    page.wait_for_selector("#model option", state="attached")
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select')]
        .filter(e => !e.closest('[hidden]') && e.type !== 'hidden' && e.labels.length === 0).map(e => e.id)""")
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 375, "no sideways scrolling at phone width"
    page.focus("#model")
    seen = set()
    for _ in range(12):
        page.keyboard.press("Tab")
        seen.add(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert "submit" in seen, seen
    context.close()


@pytest.mark.parametrize("path, rendered", [
    ("/docs", "#swagger-ui .opblock-summary-path[data-path='/v1/generate']"),  # Swagger UI lists the routes
    ("/redoc", ".redoc-wrap"),  # ReDoc's own element once it has drawn the reference
])
def test_the_api_docs_work_without_internet(browser, stack, path, rendered):
    """Only the gateway's own origin is reachable: Swagger UI, ReDoc and the icon come from the package."""
    context = browser.new_context()
    outside = []

    def only_the_gateway(route):
        if route.request.url.startswith(stack.url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context.route("**/*", only_the_gateway)
    page = context.new_page()
    page.goto(stack.url + path)
    page.wait_for_selector(rendered, timeout=30000)
    assert page.get_attribute("link[rel~='icon']", "href") == "/favicon.ico"
    context.close()
    # ReDoc's "API docs by Redocly" badge is an image on its CDN: decoration only, the reference is all there.
    assert [url for url in outside if not url.endswith("/redoc/logo-mini.svg")] == [], outside
    icon = httpx.get(stack.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
