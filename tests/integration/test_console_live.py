"""The console (`make console`, scripts/console.py and console/) in a real headless Chromium, Debian's
`chromium` driven by Playwright, against the session's real TorchServe: the console is started as a
user starts it, pointed at that server and its model store, and the tests click, type, drop, paste
and record as a person would (the microphone is Chromium's fake one, playing a generated tone).

Screenshots are saved in a folder under pytest's tmp dir (printed when a test fails); with
CONSOLE_SCREENSHOTS=docs/images the one docs/console.md shows is copied there too.
"""
import base64
import hashlib
import http.client
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from model_defs.audio import encode_audio
from scripts.local_torchserve import REPO_ROOT, free_port, read_properties
from scripts.samples import SAMPLE_TEXT, write_samples
from tests.support.user_models import png_bytes
from train.synthetic_sounds import generate_clip

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Headless as root on a machine without a network: no sandbox (root), and none of Chromium's own
# connections (component updates, sync, QUIC probes), which a closed network refuses noisily.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SCREENSHOTS_ENV = "CONSOLE_SCREENSHOTS"
DOCS_SCREENSHOT = "console.png"
CONSOLE_START_TIMEOUT_S = 120
ANSWER_TIMEOUT_MS = 120_000  # explanations take seconds on 2 busy cores; a hung server fails the test
WIDE, NARROW = {"width": 1280, "height": 800}, {"width": 420, "height": 900}
IMAGE_VARIANTS = ["image_classifier", "image_classifier_int8", "image_classifier_onnx"]


# ---- the console, the browser, the inputs --------------------------------------------------------
def start_console(inference_url: str, model_store: Path, key_file: Path):
    """`python -m scripts.console` on a free port, as make console runs it: (its process, the URL it
    prints, all it printed until then)."""
    command = [sys.executable, "-m", "scripts.console", "--port", "0", "--inference-url", inference_url,
               "--model-store", str(model_store), "--key-file", str(key_file)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed, url = [], None
    deadline = time.monotonic() + CONSOLE_START_TIMEOUT_S
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        printed.append(line)
        found = re.search(r"console: open (http://127\.0\.0\.1:\d+/\S*)", line)
        url = found.group(1) if found else None
    if url is None:
        process.kill()
        pytest.fail(f"make console printed no URL:\n{''.join(printed)}{process.stdout.read()}")
    return process, url, "".join(printed)


def stop_console(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def console(server):
    """The console for the session's TorchServe and its model store: (the URL it prints, all it printed)."""
    process, url, printed = start_console(server.inference_url, server.process.workdir / "model_store",
                                          server.process.key_file)
    yield url, printed
    stop_console(process)


@pytest.fixture(scope="module")
def console_url(console) -> str:
    return console[0]


@pytest.fixture(scope="module")
def origin(console_url) -> str:
    return console_url.split("/#", 1)[0]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("console-samples"), {"image", "text", "audio"})


@pytest.fixture(scope="module")
def microphone_sound(tmp_path_factory) -> Path:
    """What Chromium's fake microphone plays (in a loop): a tone from the demo sound generator, long
    enough that a second-long window of the recording is all tone, as 16-bit PCM WAV."""
    rng = np.random.default_rng(11)
    clip = generate_clip("tone", rng, sample_rate=48000, channels=1)
    while len(clip.samples) < 1.6 * clip.sample_rate:
        clip = generate_clip("tone", rng, sample_rate=48000, channels=1)
    path = tmp_path_factory.mktemp("console-microphone") / "tone.wav"
    path.write_bytes(encode_audio(clip.samples, clip.sample_rate, subtype="PCM_16"))
    return path


@pytest.fixture(scope="module")
def browser(microphone_sound):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's package (apt-get install chromium) "
                    "or set CHROMIUM to its path")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            *CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={microphone_sound}"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("console-screenshots")

    def save(page: Page, name: str) -> Path:
        path = folder / name
        page.screenshot(path=str(path), full_page=True)
        wanted = os.environ.get(SCREENSHOTS_ENV)
        if wanted and name == DOCS_SCREENSHOT:
            destination = Path(wanted) if Path(wanted).is_absolute() else REPO_ROOT / wanted
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination / name)
        return path

    save.folder = folder
    return save


@pytest.fixture
def page(browser, request, screenshots):
    """A fresh tab at 1280x800 that fails the test on any script error in the page; the tab's last
    state is saved as <test name>.png, a failed test's included."""
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    screenshots(page, f"{request.node.name}.png")
    context.close()
    assert errors == [], f"script errors in the page: {errors}"


def open_console(page: Page, console_url: str, model: str) -> None:
    page.goto(f"{console_url}&model={model}")
    page.wait_for_selector(f'#model-list .model[data-model="{model}"][aria-current="true"]')
    page.wait_for_selector('#server-status[data-tone="good"]')


def explain_the_star(page: Page, console_url: str, samples: dict) -> None:
    """The image model's page, with the sample star uploaded, predicted and explained."""
    open_console(page, console_url, "image_classifier")
    page.set_input_files("#file-input", str(samples["image"]))
    page.wait_for_selector("#prediction-body .top-label")
    page.click("#explain-button")
    page.wait_for_selector('canvas.heat-map[data-target="star"]')


def heat_map_pixels(page: Page) -> dict:
    """The heat-map layer's painted pixels: how many, and a digest of them all."""
    return page.evaluate("""() => {
        const canvas = document.querySelector('canvas.heat-map');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let painted = 0, green = 0, red = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (data[i + 3] === 0) continue;
            painted++;
            if (data[i + 1] > data[i]) green++; else red++;
        }
        return {painted, green, red, pixels: canvas.width * canvas.height, data: Array.from(data)};
    }""")


def digest(pixels: dict) -> str:
    return hashlib.sha256(bytes(pixels["data"])).hexdigest()


# ---- images ---------------------------------------------------------------------------------------
def test_an_image_upload_shows_the_right_top_label_and_a_heat_map(server, page, console_url, samples, screenshots):
    open_console(page, console_url, "image_classifier")
    page.set_input_files("#file-input", str(samples["image"]))
    top = page.wait_for_selector("#prediction-body .top-label").inner_text()
    expected = server.predict("image_classifier", data=samples["image"].read_bytes()).json()
    assert top == "star" == next(iter(expected))
    shown = {li.get_attribute("data-label"): float(li.get_attribute("data-probability"))
             for li in page.query_selector_all("#prediction-body .bars li")}
    assert shown == pytest.approx(expected)
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", page.inner_text("#prediction-body .latency"))

    with page.expect_response(lambda response: "/explanations/image_classifier" in response.url) as answered:
        page.click("#explain-button")
    explanation = answered.value.json()
    page.wait_for_selector('canvas.heat-map[data-target="star"]')
    pixels = heat_map_pixels(page)
    # A cell gets no paint only where its attribution is exactly zero: a star's cells do not.
    assert pixels["painted"] > pixels["pixels"] / 2 and pixels["green"] > 0 and pixels["red"] > 0, pixels["painted"]
    assert page.inner_text("#explanation-body .explained-target") == explanation["target"] == "star"
    delta = page.inner_text("#explanation-body .convergence-delta")
    assert float(delta) == pytest.approx(explanation["convergence_delta"], rel=0.01, abs=1e-6)
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", page.inner_text("#explanation-body .explain-time"))
    screenshots(page, "image-explanation.png")


def test_choosing_another_target_changes_the_heat_map(page, console_url, samples, screenshots):
    explain_the_star(page, console_url, samples)
    star = heat_map_pixels(page)
    with page.expect_response(lambda response: "/explanations/" in response.url) as answered:
        page.select_option("#target-select", "circle")
    assert answered.value.request.headers["x-explain-target"] == "circle"
    page.wait_for_selector('canvas.heat-map[data-target="circle"]')
    circle = heat_map_pixels(page)
    assert circle["painted"] > 0 and digest(circle) != digest(star)
    # The method and SmoothGrad options reach the handler, and the answer says it used them.
    with page.expect_response(lambda response: "/explanations/" in response.url) as answered:
        page.select_option("#method-select", "gradient_shap")
    assert answered.value.json()["method"] == "gradient_shap"
    page.wait_for_function("() => document.querySelector('#explanation .meta')?.textContent.includes('gradient_shap')")
    screenshots(page, "image-other-target.png")


def test_an_image_dropped_or_pasted_is_predicted(page, console_url, samples):
    open_console(page, console_url, "image_classifier")
    encoded = base64.b64encode(samples["image"].read_bytes()).decode()
    make_file = f"""(name) => {{
        const bytes = Uint8Array.from(atob('{encoded}'), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {{type: 'image/png'}}));
        return transfer;
    }}"""
    transfer = page.evaluate_handle(make_file, "dropped.png")
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#prediction-body .top-label")
    assert page.inner_text("#prediction-body .top-label") == "star"
    assert "dropped.png" in page.inner_text("#input-preview")

    page.evaluate(f"""() => {{
        const transfer = ({make_file})('pasted.png');
        document.dispatchEvent(new ClipboardEvent('paste', {{clipboardData: transfer, bubbles: true}}));
    }}""")
    page.wait_for_function("() => document.querySelector('#input-preview')?.textContent.includes('pasted.png')")
    page.wait_for_selector("#prediction-body .top-label")
    assert page.inner_text("#prediction-body .top-label") == "star"


def test_a_bad_file_shows_the_handlers_error_message(server, page, console_url, tmp_path, screenshots):
    open_console(page, console_url, "image_classifier")
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"these bytes are no image at all")
    expected = server.predict("image_classifier", data=bad.read_bytes()).json()
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#prediction-body .error")
    assert page.inner_text("#prediction-body .error-title") == f"400 {expected['type']}"
    assert page.inner_text("#prediction-body .error-message") == expected["message"]
    screenshots(page, "bad-file.png")

    # 48 megapixels of one colour: a small file, refused from its header before decoding (413).
    huge = tmp_path / "panorama.png"
    huge.write_bytes(png_bytes(Image.new("RGB", (8000, 6000), (40, 90, 160))))
    expected = server.predict("image_classifier", data=huge.read_bytes()).json()
    assert expected["code"] == 413
    page.set_input_files("#file-input", str(huge))
    page.wait_for_selector("#prediction-body .error-title >> text=413")
    assert page.inner_text("#prediction-body .error-title") == f"413 {expected['type']}"
    assert page.inner_text("#prediction-body .error-message") == expected["message"]


def test_the_compare_view_shows_all_three_image_variants(page, console_url, samples, screenshots):
    explain_the_star(page, console_url, samples)
    page.click("#compare-button")
    page.wait_for_selector("#comparison-body .variant-card >> nth=2")
    cards = page.query_selector_all("#comparison-body .variant-card")
    assert sorted(card.get_attribute("data-model") for card in cards) == IMAGE_VARIANTS
    for card in cards:
        assert card.get_attribute("data-top-label") == "star"
        assert len(card.query_selector_all(".bars li")) == 3
        assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", card.query_selector(".latency").inner_text())
    assert page.inner_text("#comparison-body .meta") == "All 3 answer star."
    # Variants come from each archive's model.json (source.name), shown with their runtime.
    assert "onnxruntime, QDQ int8" in page.inner_text('#comparison-body .variant-card[data-model="image_classifier_int8"]')
    screenshots(page, DOCS_SCREENSHOT)


# ---- text ---------------------------------------------------------------------------------------
def test_a_text_explanation_highlights_one_span_per_token_at_its_offsets(page, console_url, screenshots):
    open_console(page, console_url, "text_classifier")
    # Characters outside the Basic Multilingual Plane count one in the handler's (Python's) offsets and
    # two in JavaScript's: the highlights must still sit on the right characters.
    text = "Bonjour 👋 — my card was charged twice for the same café order, can I get a refund? 🙏"
    page.fill("#text-box", text)
    with page.expect_response(lambda response: "/explanations/text_classifier" in response.url) as answered:
        page.click("#explain-button")
    explanation = answered.value.json()
    assert explanation["offsets_in"] == "text"
    page.wait_for_selector(".highlighted-text .token")
    spans = page.eval_on_selector_all(".highlighted-text .token", """spans => spans.map(span => ({
        start: Number(span.dataset.start), end: Number(span.dataset.end), text: span.textContent,
        attribution: Number(span.dataset.attribution), tokens: span.dataset.tokenIndices.split(' ').map(Number),
        colour: getComputedStyle(span).backgroundColor}))""")
    tokens = explanation["tokens"]
    # Every returned token is drawn once, in a span at its offsets. Byte-level BPE gives an emoji several
    # tokens with the same offsets: those share one span, which sums their attributions.
    assert sorted(index for span in spans for index in span["tokens"]) == list(range(len(tokens)))
    assert sum(len(span["tokens"]) == 1 for span in spans) > 10
    for span in spans:
        members = [tokens[index] for index in span["tokens"]]
        assert span["start"] == min(t["start"] for t in members) and span["end"] == max(t["end"] for t in members)
        assert span["text"] == text[span["start"]:span["end"]]
        assert all(t["token"] == text[t["start"]:t["end"]] for t in members)
        assert span["attribution"] == pytest.approx(sum(t["attribution"] for t in members))
        red, green = (int(value) for value in re.findall(r"[\d.]+", span["colour"])[:2])
        if span["attribution"] > 0:
            assert green > red, span
        elif span["attribution"] < 0:
            assert red > green, span
    assert any(len(span["tokens"]) > 1 and span["text"] == "👋" for span in spans)
    assert page.inner_text(".highlighted-text") == text  # nothing dropped or doubled between the tokens
    screenshots(page, "text-explanation.png")
    # SmoothGrad reaches the handler, and the redrawn explanation says it was used.
    with page.expect_response(lambda response: "/explanations/text_classifier" in response.url) as answered:
        page.check("#smoothgrad-check")
    assert answered.value.json()["noise_tunnel"] is True
    page.wait_for_function("() => document.querySelector('#explanation .meta')?.textContent.includes('SmoothGrad')")


def test_a_truncated_text_says_so(page, console_url):
    open_console(page, console_url, "text_classifier")
    page.fill("#text-box", " ".join([SAMPLE_TEXT] * 12))
    page.click("#predict-button")
    page.wait_for_selector('#prediction-body dd[data-header="X-Text-Truncated"]')
    assert page.inner_text('#prediction-body dd[data-header="X-Text-Truncated"] .header-value') == "true"
    kept, total = page.inner_text('#prediction-body dd[data-header="X-Text-Tokens"] .header-value').split("/")
    assert int(kept) < int(total)
    assert "only its first tokens count" in page.inner_text("#prediction-body")


# ---- audio ---------------------------------------------------------------------------------------
def test_an_audio_file_gets_a_prediction_and_its_explanation_drawn(page, console_url, samples, screenshots):
    open_console(page, console_url, "audio_classifier")
    page.set_input_files("#file-input", str(samples["audio"]))
    page.wait_for_selector("#prediction-body .top-label")
    assert page.inner_text("#prediction-body .top-label") == "chirp_up"
    assert page.inner_text('#prediction-body dd[data-header="X-Audio-Window"] .header-value') in ("padded", "cropped", "exact")
    with page.expect_response(lambda response: "/explanations/audio_classifier" in response.url) as answered:
        page.click("#explain-button")
    explanation = answered.value.json()
    page.wait_for_selector(".audio-charts")
    counts = page.eval_on_selector_all(".audio-charts canvas", "canvases => canvases.map(c => Number(c.dataset.count))")
    assert counts == [len(explanation["frames"]), len(explanation["mel_bands"])]
    assert page.eval_on_selector("img.spectrogram", "img => img.complete && img.naturalWidth > 0")
    screenshots(page, "audio-explanation.png")


def test_a_recording_from_the_microphone_gets_a_prediction(page, console_url, screenshots):
    sent = []

    def keep_body(route):
        sent.append(route.request.post_data_buffer)
        route.continue_()

    page.route("**/predictions/audio_classifier/**", keep_body)
    open_console(page, console_url, "audio_classifier")
    page.press("body", "r")  # the key for Record, as a keyboard user starts it
    page.wait_for_selector('#record-button[aria-pressed="true"]')
    page.wait_for_function("() => parseFloat((document.querySelector('#record-status').textContent.match(/([\\d.]+) s/) || [])[1]) >= 2")
    page.click("#record-button")
    page.wait_for_selector("#prediction-body .top-label")
    # The fake microphone plays a tone: what the recording holds, and what the model hears.
    assert page.inner_text("#prediction-body .top-label") == "tone"
    # What was sent: the recording, encoded in the page as 16-bit PCM WAV, one channel, at the device's rate.
    info = soundfile.info(io.BytesIO(sent[0]))
    assert (info.format, info.subtype, info.channels) == ("WAV", "PCM_16", 1) and info.duration >= 2
    shown = float(page.inner_text('#prediction-body dd[data-header="X-Audio-Duration"] .header-value'))
    assert shown == pytest.approx(info.duration, abs=1e-3)


# ---- the key, the keyboard, the window -------------------------------------------------------
def test_a_wrong_key_shows_a_clear_message_and_the_right_one_works(page, origin, console_url, screenshots):
    page.goto(f"{origin}/#key=not-the-key&model=text_classifier")
    banner = page.wait_for_selector("#banner:not([hidden])")
    assert "TorchServe refused the inference key" in banner.inner_text()
    assert "InvalidKeyException" in banner.inner_text()
    assert page.evaluate("document.activeElement.id") == "key-input"
    assert len(page.query_selector_all("#model-list .model")) >= 5  # the page, not a blank one
    screenshots(page, "wrong-key.png")
    page.click("#predict-button")  # a prediction with the wrong key: the same message, no stale answer
    page.wait_for_selector("#prediction-body .error")
    assert "InvalidKeyException" in page.inner_text("#prediction-body .error-title")

    page.fill("#key-input", console_url.split("#key=", 1)[1])
    page.press("#key-input", "Enter")
    page.wait_for_selector("#banner", state="hidden")
    page.click("#predict-button")
    page.wait_for_selector("#prediction-body .top-label")


def test_without_a_key_the_page_asks_for_one(page, origin):
    page.goto(f"{origin}/")
    banner = page.wait_for_selector("#banner:not([hidden])")
    assert "No inference key" in banner.inner_text()


def test_the_key_leaves_the_address_bar_and_is_in_no_served_file(page, console_url, origin):
    key = console_url.split("#key=", 1)[1]
    open_console(page, console_url, "text_classifier")
    assert key not in page.url
    served = ["", "models.json", *(path.name for path in (REPO_ROOT / "console").iterdir())]
    for name in served:
        response = requests.get(f"{origin}/{name}", timeout=30)
        assert response.status_code == 200 and key not in response.text, name
    # Traversal towards the checkout's key_file.json (where make serve writes it), sent as written: requests
    # (urllib3) would remove the dot segments before sending, and ask for /key_file.json instead. README.md
    # stands beside console/ in every checkout: a traversal that worked would answer it even where this
    # checkout has no key_file.json.
    host, port = origin.removeprefix("http://").split(":")
    for path in (f"{dots}{name}" for name in ("key_file.json", "README.md")
                 for dots in ("/../", "/%2e%2e/", "/..%2f")):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", path)
            answer = connection.getresponse()
            assert answer.status == 404 and key not in answer.read().decode(errors="replace"), path
        finally:
            connection.close()


def test_a_keyboard_alone_picks_a_model_and_gets_an_answer(page, console_url):
    open_console(page, console_url, "image_classifier")
    page.keyboard.press("m")
    for _ in range(10):
        if page.evaluate("document.activeElement.dataset.model") == "text_classifier":
            break
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_selector('#model-list .model[data-model="text_classifier"][aria-current="true"]')
    page.keyboard.press("p")
    page.wait_for_selector("#prediction-body .top-label")
    assert page.inner_text("#prediction-body .top-label") == "billing"
    page.keyboard.press("e")
    page.wait_for_selector(".highlighted-text .token")
    page.focus("#text-box")
    page.keyboard.press("End")
    page.keyboard.type(" I cannot log in")  # typing a "p" or "e" in the box is text, not a shortcut
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => document.querySelector('#prediction-body .meta') !== null")


@pytest.mark.parametrize("viewport", [WIDE, NARROW], ids=["1280x800", "narrow"])
def test_the_page_fits_the_window(page, console_url, samples, viewport, screenshots):
    page.set_viewport_size(viewport)
    explain_the_star(page, console_url, samples)
    # No sideways scrolling: every panel fits the window's width.
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    assert page.is_visible("#predict-button") and page.is_visible("canvas.heat-map")
    screenshots(page, f"window-{viewport['width']}x{viewport['height']}.png")


# ---- the console's server -------------------------------------------------------------------------
def test_make_console_prints_the_url_with_the_current_key(server, console):
    url, printed = console
    assert url.endswith(f"/#key={server.inference_key}")
    assert "image_classifier_int8" in printed and server.inference_url in printed


def test_the_model_list_comes_from_the_archives(server, origin):
    models = requests.get(f"{origin}/models.json", timeout=30).json()["models"]
    by_name = {(model["name"], model["version"]): model for model in models}
    for model in server.models:
        name, _, version = model.partition("/")
        entry = by_name[(name, version or "1.0")]
        assert (entry["modality"], entry["runtime"]) == (server.kinds[model].modality, server.kinds[model].runtime)
    assert by_name[("image_classifier_int8", "1.0")]["variant_of"] == "image_classifier"
    assert by_name[("image_classifier_int8", "1.0")]["quantization"] == "QDQ"
    assert by_name[("image_classifier", "1.0")]["variant_of"] is None
    assert by_name[("text_classifier", "1.0")]["default"] and not by_name[("text_classifier", "2.0")]["default"]


def test_the_console_forwards_only_the_listed_models_to_its_own_host(server, origin):
    headers = server.inference_headers
    answered = requests.post(f"{origin}/predictions/text_classifier/2.0", data=SAMPLE_TEXT.encode(),
                             headers={**headers, "Content-Type": "text/plain"}, timeout=60)
    assert answered.status_code == 200 and answered.headers["X-Text-Truncated"] == "false"
    unlisted = requests.post(f"{origin}/predictions/not_a_model", data=b"x", headers=headers, timeout=60)
    assert unlisted.status_code == 404 and unlisted.json()["type"] == "ModelNotListed"
    # A page elsewhere whose host name resolves to 127.0.0.1 (DNS rebinding) sends its own Host.
    rebound = requests.post(f"{origin}/predictions/text_classifier", data=b"x",
                            headers={**headers, "Host": "attacker.example:80"}, timeout=60)
    assert rebound.status_code == 421
    assert "Access-Control-Allow-Origin" not in answered.headers


def test_a_body_too_large_is_refused_in_torchserves_words(server, origin):
    """The handler's own limit (image max_bytes, 10 MiB) answers through the console as it is; a body over
    TorchServe's max_request_size is refused by the console itself, in the same JSON form."""
    headers = server.inference_headers
    over_handler = requests.post(f"{origin}/predictions/image_classifier", data=bytes(11 * 1024 * 1024), headers=headers,
                                 timeout=120)
    assert over_handler.status_code == 413 and over_handler.json()["type"] == "PayloadTooLarge"
    max_request_size = int(read_properties(REPO_ROOT / "config.properties")["max_request_size"])
    over_server = requests.post(f"{origin}/predictions/image_classifier", data=bytes(max_request_size + 1),
                                headers=headers, timeout=120)
    assert over_server.status_code == 413 and over_server.json()["type"] == "RequestTooLarge"
    assert str(max_request_size) in over_server.json()["message"]


def test_without_torchserve_the_console_and_the_page_say_so(server, page):
    """make console before make serve (or after make stop): it still serves the page, and both say why
    nothing answers."""
    process, url, printed = start_console(f"http://127.0.0.1:{free_port()}", server.process.workdir / "model_store",
                                          server.process.key_file)
    try:
        assert "does not answer" in printed and "make serve" in printed
        page.goto(url)
        banner = page.wait_for_selector("#banner:not([hidden])")
        assert "TorchServe does not answer" in banner.inner_text() and "502 TorchServeUnreachable" in banner.inner_text()
    finally:
        stop_console(process)
