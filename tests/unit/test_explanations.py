"""Explanations in-process, on the real exports: every modality's answer, per-request targets and
methods, mixed batches, bounded cost, predictions unchanged afterwards, attributions that add up to
the change in the logit, and attributions that point at the evidence: the shape on the grid the image
answer returns, the class keyword among the tokens, the chirp's frames and mel bands among a tone and
noise that fill the clip."""
import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from explanations import AttributionCost, attribute
from export_paths import REPO_ROOT, export_dir
from item_errors import PreparedBatch
from tests.support.harness import explain, load_handler, predict, run_batch, worker_row
from model_defs.audio import encode_audio
from train.synthetic_shapes import SHAPES, render_shape_with_mask


def model_yaml(model: str, **handler_settings) -> dict:
    config = yaml.safe_load((REPO_ROOT / "configs" / f"{model}.yaml").read_text())
    config["handler"] = {**config["handler"], **handler_settings}
    return config


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def json_row(**document) -> dict:
    return worker_row(json.dumps(document), "application/json")


def decoded_png(encoded: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    return image


# ---- image ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_handler(tmp_path_factory):
    return load_handler("image_classifier_handler", export_dir("image_classifier"), "image_classifier",
                        tmp_dir=tmp_path_factory.mktemp("image"))


STAR, STAR_MASK = render_shape_with_mask("star", 32, seed=11)


def test_an_image_explanation_names_its_target_and_holds_a_coarse_grid(image_handler):
    handler, _ = image_handler
    (prediction,) = predict(image_handler, worker_row(png(STAR)))
    (response,) = explain(image_handler, worker_row(png(STAR)))
    assert response.status == 200
    body = response.body
    assert body["target"] == next(iter(prediction.body)) == "star"
    assert body["probability"] == pytest.approx(prediction.body["star"], abs=1e-5)
    assert body["method"] == "integrated_gradients" and body["noise_tunnel"] is False
    grid = np.asarray(body["attributions"])
    assert grid.shape == (14, 14) and np.isfinite(grid).all()
    assert body["grid"] == {"rows": 14, "columns": 14, "input_size": [32, 32], "cell_pixels": [2.286, 2.286]}
    assert "heatmap_png" not in body
    assert len(json.dumps(body)) < 10_000, "the answer stays small"


def test_a_modality_without_a_layout_of_its_own_answers_its_attributions_as_they_are(image_handler, monkeypatch):
    # A new modality need not lay its attributions out (batch_handler's default explanation_fields):
    # /explanations then answers them shaped like one input, here [3, 32, 32] pixels, not a 500.
    from batch_handler import BatchClassifierHandler

    handler, _ = image_handler
    monkeypatch.setattr(handler, "explanation_fields",
                        BatchClassifierHandler.explanation_fields.__get__(handler))
    (response,) = explain(image_handler, worker_row(png(STAR)))
    assert response.status == 200, response.body
    assert response.body["target"] == "star" and response.body["shape"] == [3, 32, 32]
    pixels = np.asarray(response.body["attributions"])
    assert pixels.shape == (3, 32, 32) and np.isfinite(pixels).all() and np.abs(pixels).sum() > 0


def full_attributions(handler, image, target: int, method="integrated_gradients", noise_tunnel=False):
    batch = PreparedBatch(size=1, inputs=handler.transform(image)[None], valid_indices=[0])
    source = handler.attribution_input(batch, 0)
    settings = handler.settings
    cost = AttributionCost(settings.explain_steps, settings.explain_samples, settings.explain_internal_batch_size,
                           settings.explain_noise_level)
    attributions, delta = attribute(source, target, method, noise_tunnel, cost)
    return source, attributions, delta


def grid_sums(values: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """[rows, columns]: the sum of `values` ([H, W] per pixel) over each cell of an even grid, a pixel cut
    by a cell border shared by area. Written here apart from the handler's pooling (each pixel split
    into rows x columns sub-pixels, summed per cell), so that a fault in that pooling shows."""
    height, width = values.shape
    fine = np.kron(values, np.ones((rows, columns))) / (rows * columns)
    return fine.reshape(rows, height, columns, width).sum(axis=(1, 3))


def dilated(mask: np.ndarray) -> np.ndarray:
    """The shape grown by one pixel: a CNN's evidence for a shape lies on its outline as much as inside it."""
    padded = np.pad(mask, 1)
    return np.max([padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def mirror_overlap(region: np.ndarray) -> float:
    """How much of `region` its transposed, upside-down or mirrored self still covers, at most."""
    return max(float((region * moved).sum() / region.sum()) for moved in (region.T, region[::-1], region[:, ::-1]))


# Generated shapes away from the image's diagonals and centre lines: the first two seeds of each
# shape whose region (shape and outline) shares less than 60% with its transposed, upside-down or
# mirrored self, and which the model classifies right (an explanation of a wrong guess shows what the
# model saw, not the shape). A transposed or flipped grid then misses most of the shape.
OFF_CENTRE_SHAPES = [("circle", 553), ("circle", 617), ("square", 74), ("square", 135), ("triangle", 42),
                     ("triangle", 46), ("star", 21), ("star", 25), ("cross", 3), ("cross", 44), ("ring", 6), ("ring", 7)]


def test_the_attribution_grid_points_at_the_shape(image_handler):
    """Through the handler's answer: the positive attribution per grid cell area on the shape (with its
    one-pixel outline) is higher than off it, for every image, and by a wide margin at the median.
    The bar: a run of these 12 images with the demo export gave ratios from 1.08 to 9.2, median 2.6;
    the same grids transposed or flipped gave medians of 0.9-1.6."""
    ratios = {}
    for shape, seed in OFF_CENTRE_SHAPES:
        image, mask = render_shape_with_mask(shape, 32, seed=seed)
        region = dilated((mask > 0.5).astype(np.float64))
        assert mirror_overlap(region) < 0.6, (shape, seed, "no longer off-centre: the generator changed")
        (response,) = explain(image_handler, worker_row(png(image)))
        assert response.status == 200 and response.body["target"] == shape, (seed, response.body["target"])
        grid = np.asarray(response.body["attributions"])
        covered = grid_sums(region, *grid.shape) / grid_sums(np.ones_like(region), *grid.shape)  # share of each cell
        evidence = grid.clip(min=0)
        on_shape = (evidence * covered).sum() / covered.sum()
        off_shape = (evidence * (1 - covered)).sum() / (1 - covered).sum()
        ratios[f"{shape}:{seed}"] = round(float(on_shape / off_shape), 2)
    assert all(ratio > 1 for ratio in ratios.values()), ratios
    assert np.median(list(ratios.values())) > 2.0, ratios


def test_the_grid_adds_up_to_the_pixel_attributions(image_handler):
    """Each cell is the sum of the pixel attributions it covers: the grid's total is the pixels' total,
    though 14 cells do not divide the demo's 32 pixels."""
    handler, _ = image_handler
    image, _ = render_shape_with_mask("cross", 32, seed=3)
    (response,) = explain(image_handler, worker_row(png(image)))
    _, attributions, _ = full_attributions(handler, image, response.body["target_index"])  # deterministic: the same
    pixels = attributions[0].sum(dim=0).double().numpy()
    grid = np.asarray(response.body["attributions"])
    assert grid.sum() == pytest.approx(pixels.sum(), abs=196 * 1e-6)  # each cell rounded to 6 decimals
    np.testing.assert_allclose(grid, grid_sums(pixels, *grid.shape), atol=1e-6)


def test_integrated_gradients_converges_at_the_configured_steps(image_handler):
    handler, _ = image_handler
    for shape in SHAPES:
        image, _ = render_shape_with_mask(shape, 32, seed=7)
        target = SHAPES.index(shape)
        source, attributions, delta = full_attributions(handler, image, target)
        with torch.no_grad():
            gap = float(source.forward(source.inputs)[0, target] - source.forward(source.baseline)[0, target])
        # Completeness: the attributions add up to f(input) - f(baseline), up to the delta.
        assert float(attributions.sum()) == pytest.approx(gap, abs=delta + 1e-4)
        assert delta < 0.05 * abs(gap), (shape, delta, gap)


@pytest.mark.parametrize("target,expected", [("circle", "circle"), (3, SHAPES[3]), ("5", SHAPES[5])])
def test_a_request_names_its_target_by_label_or_index(image_handler, target, expected):
    encoded = base64.b64encode(png(STAR)).decode()
    (response,) = explain(image_handler, json_row(data=encoded, target=target))
    assert response.status == 200 and response.body["target"] == expected
    assert response.body["target_index"] == SHAPES.index(expected)


def test_the_target_can_come_from_a_form_field(image_handler):
    row = {**worker_row(png(STAR), field="data"), "target": bytearray(b"ring")}  # -F data=@x.png -F target=ring
    (response,) = explain(image_handler, row)
    assert response.status == 200 and response.body["target"] == "ring"


def test_options_can_come_from_request_headers(image_handler):
    handler, context = image_handler
    headers = {"X-Explain-Target": "cross", "x-explain-method": "gradient_shap", "X-Explain-Visualize": "1"}
    (response,) = run_batch(handler, context, [worker_row(png(STAR))], explain=[True], headers=[headers])
    assert response.status == 200
    assert (response.body["target"], response.body["method"]) == ("cross", "gradient_shap") and "heatmap_png" in response.body


@pytest.mark.parametrize("options,named", [
    ({"target": "hexagon"}, "unknown target 'hexagon'; valid labels: circle, square"),
    ({"target": 6}, "target index 6 is out of range"),
    ({"target": [1]}, "target must be a label or a class index"),
    ({"method": "lime"}, "unknown method 'lime'; valid choices: integrated_gradients, gradient_shap"),
    ({"noise_tunnel": "maybe"}, "noise_tunnel must be true or false"),
])
def test_bad_explanation_options_get_a_400_naming_them(image_handler, options, named):
    encoded = base64.b64encode(png(STAR)).decode()
    responses = explain(image_handler, json_row(data=encoded, **options), worker_row(png(STAR)))
    assert responses[0].status == 400, responses[0].body
    assert responses[0].body["type"] == "InvalidExplanationOptions" and named in responses[0].body["message"]
    assert responses[1].status == 200 and responses[1].body["target"] == "star"


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap"])
@pytest.mark.parametrize("noise_tunnel", [False, True])
def test_every_method_with_and_without_smoothgrad(image_handler, method, noise_tunnel):
    encoded = base64.b64encode(png(STAR)).decode()
    (response,) = explain(image_handler, json_row(data=encoded, method=method, noise_tunnel=noise_tunnel))
    assert response.status == 200, response.body
    assert response.body["method"] == method and response.body["noise_tunnel"] is noise_tunnel
    grid = np.asarray(response.body["attributions"])
    assert grid.shape == (14, 14) and np.isfinite(grid).all() and np.abs(grid).sum() > 0


def test_the_method_is_chosen_per_model_in_the_model_config(tmp_path):
    loaded = load_handler("image_classifier_handler", export_dir("image_classifier"), "image_classifier",
                          model_yaml("image_classifier", explain_method="gradient_shap", explain_noise_tunnel=True), tmp_path)
    (response,) = explain(loaded, worker_row(png(STAR)))
    assert (response.body["method"], response.body["noise_tunnel"]) == ("gradient_shap", True)


def test_a_heat_map_png_on_request(image_handler):
    encoded = base64.b64encode(png(STAR)).decode()
    (response,) = explain(image_handler, json_row(data=encoded, visualize=True))
    heatmap = decoded_png(response.body["heatmap_png"])
    assert heatmap.format == "PNG" and min(heatmap.size) >= 200


def test_a_mixed_batch_answers_each_request_on_its_own_route(image_handler):
    handler, context = image_handler
    rows = [worker_row(png(STAR)), json_row(data=base64.b64encode(png(STAR)).decode(), target="cross"),
            worker_row(b"not an image"), worker_row(png(STAR)), worker_row(b"")]
    responses = run_batch(handler, context, rows, explain=[False, True, True, False, True])
    assert [r.status for r in responses] == [200, 200, 400, 200, 400]
    assert next(iter(responses[0].body)) == "star" and "attributions" not in responses[0].body
    assert responses[1].body["target"] == "cross" and "attributions" in responses[1].body
    assert responses[2].body["type"] == "UndecodableImage"
    assert responses[3].body == responses[0].body


def test_predictions_are_unchanged_after_an_explanation(image_handler):
    handler, _ = image_handler
    (before,) = predict(image_handler, worker_row(png(STAR)))
    explain(image_handler, worker_row(png(STAR)), worker_row(png(STAR)))
    (after,) = predict(image_handler, worker_row(png(STAR)))
    assert after.body == before.body
    assert not handler.model.training
    assert all(parameter.grad is None for parameter in handler.model.parameters())


def test_a_batch_stops_explaining_when_its_time_budget_is_spent(image_handler, monkeypatch):
    """The model-config's budget (10 s), on a clock that each explanation moves by 6 s whatever the
    hardware: after one explanation (6 s spent) the next would likely overrun (12 s), so it and the rest
    are answered 503; the prediction in the batch is answered."""
    import explanations

    clock = {"now": 0.0}
    real_explain_item = explanations.explain_item

    def six_seconds_each(*args):
        clock["now"] += 6.0
        return real_explain_item(*args)

    monkeypatch.setattr(explanations, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    monkeypatch.setattr(explanations, "explain_item", six_seconds_each)
    handler, context = image_handler
    assert handler.settings.explain_budget_seconds == 10
    responses = run_batch(handler, context, [worker_row(png(STAR))] * 4, explain=[True, False, True, True])
    assert [r.status for r in responses] == [200, 200, 503, 503]
    assert "attributions" in responses[0].body and next(iter(responses[1].body)) == "star"
    assert responses[2].body["type"] == "ExplanationBudgetSpent" and "retry" in responses[2].body["message"]


# ---- text -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_handler(tmp_path_factory):
    return load_handler("text_classifier_handler", export_dir("text_classifier"), "text_classifier",
                        tmp_dir=tmp_path_factory.mktemp("text"))


def test_text_attributions_are_per_token_with_offsets_into_the_text(text_handler):
    text = "Hi,  my CARD was charged   twice!! 🙏"
    (response,) = explain(text_handler, worker_row(text, "text/plain"))
    assert response.status == 200
    body = response.body
    assert body["offsets_in"] == "text"
    tokens = body["tokens"]
    assert [t["token"] for t in tokens] == [text[t["start"]:t["end"]] for t in tokens]
    covered = {i for t in tokens for i in range(t["start"], t["end"])}
    assert {i for i, character in enumerate(text) if not character.isspace()} <= covered, "every character is in a token"
    assert all(np.isfinite(t["attribution"]) for t in tokens)
    assert response.headers["X-Text-Tokens"].split("/")[0] == str(len(tokens))


def test_a_text_that_cannot_be_traced_character_by_character_gets_normalised_offsets(text_handler):
    text = "Cafe\u0301 charged me twice"  # a combining accent: NFKC composes across characters
    (response,) = explain(text_handler, worker_row(text, "text/plain"))
    body = response.body
    assert body["offsets_in"] == "normalized_text"
    assert [t["token"] for t in body["tokens"]] == [body["normalized_text"][t["start"]:t["end"]] for t in body["tokens"]]


# Each a support message wrapped in greetings and thanks: the intent, its keyword, and the filler words.
KEYWORD_MESSAGES = [
    ("hello there, i need a copy of my invoice please, thanks", "billing", "invoice", ["hello", "there", "please", "thanks"]),
    ("hi, please cancel my subscription, thank you", "cancel", "subscription", ["hi", "please", "thank", "you"]),
    ("hello, i forgot my password again, many thanks", "login", "password", ["hello", "many", "thanks"]),
    ("hi there, where is my parcel? thanks", "shipping", "parcel", ["hi", "there", "thanks"]),
]


def tokens_within(tokens: list, text: str, word: str) -> list:
    """The tokens of `word` (its first occurrence in `text`; a word may be split into several tokens)."""
    start = text.index(word)
    return [t for t in tokens if start <= t["start"] < start + len(word)]


@pytest.mark.parametrize("message,intent,keyword,fillers", KEYWORD_MESSAGES)
def test_the_class_keyword_is_the_top_token_and_the_fillers_weigh_little(text_handler, message, intent, keyword, fillers):
    """The predicted intent, explained: its keyword's token gets the largest attribution of the text,
    and each greeting or politeness word less than a quarter of it (recorded: at most 15%)."""
    (response,) = explain(text_handler, json_row(text=message))
    assert response.status == 200 and response.body["target"] == intent, response.body["target"]
    tokens = response.body["tokens"]
    top = max(tokens, key=lambda t: t["attribution"])
    assert top in tokens_within(tokens, message, keyword), (keyword, top)
    for filler in fillers:
        for token in tokens_within(tokens, message, filler):
            assert token["attribution"] < 0.25 * top["attribution"], (filler, token, top)


def completeness_gap(handler, text: str, target: int) -> float:
    """f(text) - f(zero embeddings) for the target's logit, computed here from the model's own parts."""
    token_ids = torch.tensor([handler.encoder.encode_batch([text]).token_ids[0]])
    with torch.no_grad():
        embeddings = handler.model.token_embeddings(token_ids)
        logits = handler.model.classify_token_embeddings(torch.cat([embeddings, torch.zeros_like(embeddings)]))
    return float(logits[0, target] - logits[1, target])


@pytest.fixture(scope="module")
def transformer_handler(tmp_path_factory):
    """A small text_transformer trained here (seeded, a few seconds), served by the same handler: its
    attention and layer norms make the Integrated Gradients path non-linear, unlike the embedding bag's
    mean, where attributions add up exactly whatever the step count."""
    from train import text as train_text

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("transformer") / "text_classifier"
    try:
        train_text.main(train_text.get_args_parser().parse_args(
            ["--arch", "text_transformer", "--embed-dim", "32", "--epochs", "4", "--lr", "0.01", "--train-per-intent", "150",
             "--heldout-per-intent", "10", "--seed", "0", "--out", str(out)]))
    finally:
        torch.set_num_threads(threads)
    return load_handler("text_classifier_handler", out, "text_classifier", tmp_dir=tmp_path_factory.mktemp("served"))


@pytest.mark.parametrize("model", ["text_handler", "transformer_handler"])
def test_text_explanations_add_up_to_the_change_in_the_logit(request, model):
    """Completeness at the configured steps: the tokens' attributions add up to f(text) - f(baseline),
    computed here, within 5% (a transformer explained with 2 steps missed by 29%)."""
    loaded, text = request.getfixturevalue(model), "please cancel my subscription"
    (response,) = explain(loaded, json_row(text=text))
    body = response.body
    gap = completeness_gap(loaded[0], text, body["target_index"])
    assert sum(t["attribution"] for t in body["tokens"]) == pytest.approx(gap, rel=0.05, abs=1e-4)
    assert body["convergence_delta"] < 0.05 * max(1.0, abs(gap))


# ---- audio ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_handler(tmp_path_factory):
    return load_handler("audio_classifier_handler", export_dir("audio_classifier"), "audio_classifier",
                        tmp_dir=tmp_path_factory.mktemp("audio"))


CHIRP_LOW_HZ, CHIRP_HIGH_HZ, CHIRP_SECONDS = 500.0, 2000.0, 0.4


def chirp_over_a_tone_and_noise(start_seconds: float, seconds: float = 1.0, sample_rate: int = 16000) -> bytes:
    """A rising chirp (500 -> 2000 Hz in 0.4 s) from `start_seconds`, over a steady 3.5 kHz tone and
    white noise that last the whole clip: no frame and no band is silent, so none equals the silence
    baseline and gets 0 by construction; the model must tell the chirp from the rest."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    samples = 0.2 * np.sin(2 * np.pi * 3500 * t) + 0.005 * rng.standard_normal(len(t))
    chirp_t = np.arange(int(CHIRP_SECONDS * sample_rate)) / sample_rate
    growth = np.log(CHIRP_HIGH_HZ / CHIRP_LOW_HZ)
    chirp = np.sin(2 * np.pi * CHIRP_LOW_HZ * CHIRP_SECONDS / growth * (np.exp(growth * chirp_t / CHIRP_SECONDS) - 1))
    start = int(start_seconds * sample_rate)
    samples[start:start + len(chirp)] += 0.5 * chirp * np.hanning(len(chirp)) ** 0.25  # soft edges, no clicks
    return encode_audio(samples.astype(np.float32), sample_rate)


def chirp_bands(handler) -> np.ndarray:
    """The mel bands that are the chirp's: those whose filter (the model's own filterbank) has most of
    its weight between the chirp's lowest and highest frequency."""
    preprocessing = handler.preprocessing
    filters = handler.feature_extractor.mel.mel_scale.fb.numpy()  # [FFT bins, mel bands]
    frequencies = np.arange(filters.shape[0]) * preprocessing.sample_rate / preprocessing.n_fft
    in_range = ((frequencies >= CHIRP_LOW_HZ) & (frequencies <= CHIRP_HIGH_HZ))[:, None]
    return (filters * in_range).sum(axis=0) / filters.sum(axis=0) > 0.5


def positive_share(values, where) -> float:
    positive = np.clip(np.asarray(values), 0, None)
    return float(positive[where].sum() / positive.sum())


# (where the chirp starts, clip seconds, sample rate): two clips of exactly 1 s, and a 2.5 s clip at
# 44.1 kHz that the handler crops to its loudest second (the one with the chirp, from about 1.49 s).
CHIRP_CLIPS = [(0.1, 1.0, 16000), (0.5, 1.0, 16000), (1.6, 2.5, 44100)]


@pytest.mark.parametrize("start,seconds,sample_rate", CHIRP_CLIPS)
def test_audio_attributions_sit_on_the_chirps_frames_and_bands(audio_handler, start, seconds, sample_rate):
    """The predicted class is the chirp, and most of the positive attribution is on the chirp's
    frames (placed in the clip from X-Audio-Window-Start) and on the chirp's mel bands, though tone and
    noise fill every frame and band. Recorded: 75-79% of the frame mass (the chirp spans 40-47% of the
    frames) and 62-65% of the band mass (14 of 40 bands); reversed in time or in pitch, 16-37%."""
    handler, _ = audio_handler
    (response,) = explain(audio_handler, worker_row(chirp_over_a_tone_and_noise(start, seconds, sample_rate)))
    assert response.status == 200
    body = response.body
    assert body["target"] == "chirp_up" and body["probability"] > 0.5, (body["target"], body["probability"])
    assert len(body["frames"]) == handler.preprocessing.num_frames and len(body["mel_bands"]) == handler.preprocessing.n_mels
    hop = body["frame_hop_seconds"]
    assert hop == pytest.approx(handler.preprocessing.hop_length / handler.preprocessing.sample_rate)
    window_start = float(response.headers["X-Audio-Window-Start"])
    if seconds > 1:
        assert response.headers["X-Audio-Window"] == "cropped" and window_start > 1.0, response.headers
    frame_times = window_start + np.arange(len(body["frames"])) * hop  # seconds into the clip as sent
    on_chirp = (frame_times >= start - 0.03) & (frame_times <= start + CHIRP_SECONDS + 0.03)
    assert positive_share(body["frames"], on_chirp) > 0.6
    assert positive_share(body["mel_bands"], chirp_bands(handler)) > 0.5


def test_an_audio_explanation_can_carry_its_spectrogram(audio_handler):
    encoded = base64.b64encode(chirp_over_a_tone_and_noise(0.3)).decode()
    (response,) = explain(audio_handler, json_row(data=encoded, visualize="true"))
    assert decoded_png(response.body["spectrogram_png"]).format == "PNG"
