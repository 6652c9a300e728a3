"""The audio handler in-process on the real export (exports/audio_classifier, from `make exports`):
every accepted format, rate, channel layout and input form, every rejection, per-item isolation in
a batch, the pad/crop headers, train/serve parity, and each generated class classified correctly."""
import base64
import json

import numpy as np
import pytest
import torch
import yaml

from export_paths import REPO_ROOT, export_dir
from tests.support.harness import load_handler, predict, run_batch, single, top_label, worker_row
from model_defs.audio import AudioPreprocessing, LogMelSpectrogram, encode_audio, prepare_clip
from model_defs.export import load_export
from train.audio import predict_probabilities
from train.synthetic_sounds import SYNTHETIC_LABELS, generate_clip

MODEL = "audio_classifier"
HANDLER = "audio_classifier_handler"
MODEL_CONFIG = yaml.safe_load((REPO_ROOT / "configs" / f"{MODEL}.yaml").read_text())
MAX_BYTES = MODEL_CONFIG["handler"]["max_bytes"]
MAX_SECONDS = MODEL_CONFIG["handler"]["max_seconds"]


@pytest.fixture(scope="module")
def audio_handler(tmp_path_factory):
    return load_handler(HANDLER, export_dir(MODEL), MODEL, tmp_dir=tmp_path_factory.mktemp("model"))


def clip_of(class_name: str, seed: int, sample_rate: int, channels: int = 1, peak: float = 0.5) -> np.ndarray:
    """A generated clip of `class_name`, normalised to `peak` so every sample format keeps it audible."""
    samples = generate_clip(class_name, np.random.default_rng(seed), sample_rate=sample_rate, channels=channels).samples
    return (samples * (peak / np.abs(samples).max())).astype(np.float32)


CHIRP_RATE = 22050
CHIRP = clip_of("chirp_up", seed=7, sample_rate=CHIRP_RATE)
CHIRP_WAV = encode_audio(CHIRP, CHIRP_RATE, "WAV", "FLOAT")


def assert_is_error(response, status: int, error_type: str, message_part: str = ""):
    assert response.status == status, response.body
    assert response.body["code"] == status and response.body["type"] == error_type, response.body
    assert message_part in response.body["message"]
    assert response.headers.get("content-type") == "application/json"


# ---- accepted formats, rates, channel layouts and input forms ------------------------------------------
FORMATS = [
    ("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
    ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"),
]


@pytest.mark.parametrize("container,subtype", FORMATS, ids=[f"{c}-{s}" for c, s in FORMATS])
def test_every_accepted_format_is_classified_like_the_float_original(audio_handler, container, subtype):
    reference = single(audio_handler, worker_row(CHIRP_WAV))
    response = single(audio_handler, worker_row(encode_audio(CHIRP, CHIRP_RATE, container, subtype)))
    assert top_label(response) == "chirp_up"
    if subtype in ("PCM_U8", "VORBIS"):  # coarse or lossy: the same sound, the runners-up may swap
        assert response.body["chirp_up"] == pytest.approx(reference.body["chirp_up"], abs=0.1)
    else:
        assert response.body == pytest.approx(reference.body, abs=1e-3)
    assert response.headers["X-Audio-Duration"] == reference.headers["X-Audio-Duration"] or container == "OGG"


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("sample_rate", [8000, 22050, 44100, 48000])
def test_every_sample_rate_and_channel_layout_is_accepted(audio_handler, sample_rate, channels):
    samples = clip_of("chord", seed=3, sample_rate=sample_rate, channels=channels)
    response = single(audio_handler, worker_row(encode_audio(samples, sample_rate, "WAV", "PCM_16")))
    assert top_label(response) == "chord"
    assert float(response.headers["X-Audio-Duration"]) == pytest.approx(len(samples) / sample_rate, abs=1e-6)


@pytest.mark.parametrize("row", [
    pytest.param(worker_row(CHIRP_WAV, "audio/wav"), id="raw-body"),
    pytest.param(worker_row(CHIRP_WAV, "audio/wav", field="data"), id="multipart-data"),
    pytest.param(worker_row(CHIRP_WAV, "application/octet-stream", field="file"), id="multipart-other-field"),
    pytest.param(worker_row(json.dumps({"data": base64.b64encode(CHIRP_WAV).decode()}), "application/json"), id="json-data"),
    pytest.param(worker_row(json.dumps({"audio": base64.b64encode(CHIRP_WAV).decode()}), "application/json"), id="json-audio"),
    pytest.param(worker_row(json.dumps({"data": "data:audio/wav;base64," + base64.b64encode(CHIRP_WAV).decode()}),
                            "application/json"), id="json-data-url"),
    pytest.param(worker_row(base64.b64encode(CHIRP_WAV), "text/plain"), id="base64-text-body"),
])
def test_every_input_form_gives_the_same_prediction(audio_handler, row):
    reference = single(audio_handler, worker_row(CHIRP_WAV))
    response = single(audio_handler, row)
    assert top_label(response) == "chirp_up"
    assert response.body == reference.body
    assert response.headers == reference.headers


def test_answers_are_the_top_three_labels_highest_first(audio_handler):
    body = single(audio_handler, worker_row(CHIRP_WAV)).body
    assert len(body) == MODEL_CONFIG["handler"]["top_k"] == 3
    assert set(body) <= set(SYNTHETIC_LABELS)
    probabilities = list(body.values())
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6


# ---- each class, through the handler ------------------------------------------------------------------
@pytest.mark.parametrize("class_name", SYNTHETIC_LABELS)
def test_a_generated_clip_of_each_class_is_classified_correctly(audio_handler, class_name):
    # Generated as training generates them (random rate, channels, loudness, noise), from seeds the
    # training and held-out sets do not use, and sent as a 16-bit WAV file.
    rows = []
    for seed in (1001, 1002):
        clip = generate_clip(class_name, np.random.default_rng(seed))
        rows.append(worker_row(encode_audio(clip.samples, clip.sample_rate, "WAV", "PCM_16")))
    assert [top_label(response) for response in predict(audio_handler, *rows)] == [class_name, class_name]


# ---- the window and its headers -----------------------------------------------------------------------
def tone(seconds, sample_rate=16000, amplitude=0.5, frequency=440.0):
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_short_clips_are_padded_and_say_so(audio_handler):
    response = single(audio_handler, worker_row(encode_audio(tone(0.5, 44100), 44100)))
    assert response.status == 200
    assert response.headers["X-Audio-Window"] == "padded"
    assert response.headers["X-Audio-Duration"] == "0.5"
    assert response.headers["X-Audio-Window-Start"] == "0"


@pytest.mark.parametrize("sample_rate", [16000, 44100, 8000])
def test_one_second_clips_fit_exactly(audio_handler, sample_rate):
    response = single(audio_handler, worker_row(encode_audio(tone(1.0, sample_rate), sample_rate)))
    assert (response.headers["X-Audio-Window"], response.headers["X-Audio-Duration"]) == ("exact", "1")


def test_long_clips_are_cropped_to_the_loudest_second_and_say_where(audio_handler):
    rate = 22050
    quiet = 0.001 * np.random.default_rng(0).standard_normal(int(3.0 * rate)).astype(np.float32)
    event_start, event_seconds = 1.6, 0.5
    quiet[int(event_start * rate):int(event_start * rate) + int(event_seconds * rate)] += tone(event_seconds, rate)
    response = single(audio_handler, worker_row(encode_audio(quiet, rate, "FLAC", "PCM_24")))
    assert response.status == 200
    assert response.headers["X-Audio-Window"] == "cropped"
    assert response.headers["X-Audio-Duration"] == "3"
    start = float(response.headers["X-Audio-Window-Start"])
    assert event_start + event_seconds - 1.0 <= start <= event_start  # the window holds the whole event
    assert top_label(response) == "tone"


def test_the_longest_clip_in_the_largest_common_format_fits_both_limits(audio_handler):
    # max_seconds of 48 kHz stereo 32-bit float: the byte limit must not refuse what the duration limit allows.
    stereo = np.repeat(tone(MAX_SECONDS, 48000)[:, None], 2, axis=1)
    content = encode_audio(stereo, 48000, "WAV", "FLOAT")
    assert len(content) <= MAX_BYTES
    response = single(audio_handler, worker_row(content))
    assert response.status == 200 and response.headers["X-Audio-Duration"] == str(MAX_SECONDS)


def test_a_clip_of_exactly_the_duration_limit_is_accepted(audio_handler):
    response = single(audio_handler, worker_row(encode_audio(tone(MAX_SECONDS, 8000), 8000)))
    assert response.status == 200 and response.headers["X-Audio-Window"] == "cropped"
    assert response.headers["X-Audio-Duration"] == str(MAX_SECONDS)


# ---- rejections: a 4xx with a JSON body naming the problem ------------------------------------------------
def wav_of(samples, rate=16000, subtype="FLOAT"):
    return encode_audio(np.asarray(samples, dtype=np.float32), rate, "WAV", subtype)


def corrupt_flac() -> bytes:
    noise = 0.3 * np.random.default_rng(1).standard_normal(32000).astype(np.float32)
    flac = bytearray(encode_audio(noise, 16000, "FLAC", "PCM_16"))
    middle = len(flac) // 2
    flac[middle:middle + 4096] = np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return bytes(flac)


REJECTIONS = [
    pytest.param(worker_row(b"this is not an audio file" * 10), 400, "UndecodableAudio", "could not be decoded", id="undecodable"),
    pytest.param(worker_row(CHIRP_WAV[:40]), 400, "UndecodableAudio", "could not be decoded", id="truncated-header"),
    pytest.param(worker_row(corrupt_flac()), 400, "UndecodableAudio", "corrupt", id="corrupt-flac-frames"),
    pytest.param(worker_row(encode_audio(tone(0.3), 16000, "AIFF", "PCM_16")), 415, "UnsupportedAudioFormat",
                 "accepted formats", id="unsupported-format"),
    pytest.param(worker_row(wav_of([])), 400, "EmptyAudio", "no samples", id="zero-samples"),
    pytest.param(worker_row(wav_of([0.1, np.nan, 0.1])), 400, "NonFiniteSamples", "NaN", id="nan-samples"),
    pytest.param(worker_row(wav_of(np.r_[tone(0.2), np.inf])), 400, "NonFiniteSamples", "infinite", id="inf-samples"),
    pytest.param(worker_row(wav_of(tone(0.2, amplitude=20000.0))), 400, "SamplesOutOfRange", "[-1, 1]", id="int-scale-float"),
    pytest.param(worker_row(wav_of(tone(0.1, 400_000), 400_000, "PCM_16")), 400, "UnsupportedSampleRate", "384000",
                 id="sample-rate-too-high"),
    pytest.param(worker_row(wav_of(np.zeros(int((MAX_SECONDS + 0.5) * 8000)), 8000, "PCM_16")), 413, "AudioTooLong",
                 f"over the limit of {MAX_SECONDS} s", id="over-duration-limit"),
    pytest.param(worker_row(b""), 400, "EmptyInput", "empty", id="empty-body"),
    pytest.param(worker_row(json.dumps({"clip": "AAAA"}), "application/json"), 400, "MissingField", "'data'", id="json-without-data"),
    pytest.param(worker_row(json.dumps({"data": "not base64!"}), "application/json"), 400, "InvalidBase64", "base64", id="json-bad-base64"),
    pytest.param(worker_row("hello, this is text", "text/plain"), 400, "InvalidInput", "text", id="text-body"),
]


@pytest.mark.parametrize("row,status,error_type,message_part", REJECTIONS)
def test_bad_input_is_answered_with_a_json_error(audio_handler, row, status, error_type, message_part):
    assert_is_error(single(audio_handler, row), status, error_type, message_part)


def test_a_body_over_the_byte_limit_is_refused_before_decoding(audio_handler):
    response = single(audio_handler, worker_row(b"RIFF" + bytes(MAX_BYTES)))
    assert_is_error(response, 413, "PayloadTooLarge", f"over the limit of {MAX_BYTES} bytes")


def test_a_clip_over_the_duration_limit_is_refused_even_when_small_in_bytes(audio_handler):
    # 40 minutes of FLAC silence is a few hundred kilobytes: the byte limit alone would let it in.
    silence = encode_audio(np.zeros(40 * 60 * 8000, np.float32), 8000, "FLAC", "PCM_16")
    assert len(silence) < MAX_BYTES
    assert_is_error(single(audio_handler, worker_row(silence)), 413, "AudioTooLong", "2400.00 s long")


# ---- batches ---------------------------------------------------------------------------------------------
def test_a_bad_item_gets_400_and_its_batch_neighbours_200(audio_handler):
    good = [
        worker_row(CHIRP_WAV),
        worker_row(encode_audio(clip_of("square_wave", 5, 48000, channels=2), 48000, "FLAC", "PCM_16"), field="data"),
        worker_row(json.dumps({"data": base64.b64encode(encode_audio(tone(2.0, 16000), 16000, "OGG", "VORBIS")).decode()}),
                   "application/json"),
    ]
    alone = [single(audio_handler, row) for row in good]
    batch = predict(audio_handler, good[0], worker_row(b"RIFF\x24\x00\x00\x00WAVEjunk" * 4), good[1], good[2])
    assert [response.status for response in batch] == [200, 400, 200, 200]
    assert_is_error(batch[1], 400, "UndecodableAudio")
    for response, reference in zip([batch[0], batch[2], batch[3]], alone):
        assert response.body == pytest.approx(reference.body, abs=1e-5)  # batching does not change answers
        assert response.headers == reference.headers
    assert [top_label(r) for r in (batch[0], batch[2], batch[3])] == ["chirp_up", "square_wave", "tone"]


def test_a_batch_of_only_bad_items_is_answered_item_by_item(audio_handler):
    batch = predict(audio_handler, worker_row(b""), worker_row(wav_of([np.nan])), worker_row(b"junk" * 50))
    assert [(r.status, r.body["type"]) for r in batch] == [(400, "EmptyInput"), (400, "NonFiniteSamples"), (400, "UndecodableAudio")]


def test_no_input_escapes_the_handler(audio_handler):
    # Mangled versions of real files: whatever libsndfile makes of them, each gets an answer of its own.
    rng = np.random.default_rng(4)
    originals = [CHIRP_WAV, encode_audio(CHIRP, CHIRP_RATE, "FLAC", "PCM_16"), encode_audio(CHIRP, CHIRP_RATE, "OGG", "VORBIS")]
    rows = []
    for original in originals:
        for cut in (12, 44, 100, len(original) // 3):
            rows.append(worker_row(original[:cut]))
        flipped = bytearray(original)
        positions = rng.integers(0, len(flipped), 64)
        flipped_values = rng.integers(0, 256, 64, dtype=np.uint8)
        for position, value in zip(positions, flipped_values):
            flipped[position] = int(value)
        rows.append(worker_row(bytes(flipped)))
    for response in predict(audio_handler, *rows):
        assert response.status == 200 or (400 <= response.status < 500 and response.body["code"] == response.status)


# ---- train/serve parity ------------------------------------------------------------------------------------
def test_handler_probabilities_equal_the_training_evaluation_path(tmp_path):
    # Every label in the answer, so the whole distribution is compared.
    all_labels_config = {**MODEL_CONFIG, "handler": {**MODEL_CONFIG["handler"], "top_k": len(SYNTHETIC_LABELS)}}
    handler, context = load_handler(HANDLER, export_dir(MODEL), MODEL, model_yaml=all_labels_config, tmp_dir=tmp_path)

    files = [
        encode_audio(clip_of("noise_burst", 11, 11025), 11025, "WAV", "PCM_16"),              # padded
        encode_audio(clip_of("chirp_down", 12, 48000, channels=2), 48000, "FLAC", "PCM_24"),  # any
        encode_audio(tone(2.5, 32000), 32000, "WAV", "FLOAT"),                                # cropped
        encode_audio(tone(1.0, 16000), 16000, "WAV", "PCM_16"),                               # exact
    ]
    responses = run_batch(handler, context, [worker_row(content) for content in files])

    export = load_export(export_dir(MODEL))
    preprocessing = AudioPreprocessing.from_dict(export.spec["preprocess"])
    waveforms = torch.stack([prepare_clip(content, preprocessing).waveform for content in files])
    expected = predict_probabilities(export.model, LogMelSpectrogram(preprocessing), waveforms)
    for response, row in zip(responses, expected):
        assert response.status == 200
        served = torch.tensor([response.body[label] for label in export.labels])
        torch.testing.assert_close(served, row, atol=1e-6, rtol=1e-5)
    assert [r.headers["X-Audio-Window"] for r in (responses[0], responses[2], responses[3])] == ["padded", "cropped", "exact"]


def test_the_export_records_its_labels_and_preprocessing():
    export = load_export(export_dir(MODEL))
    assert export.spec["modality"] == "audio" and export.labels == SYNTHETIC_LABELS
    assert AudioPreprocessing.from_dict(export.spec["preprocess"]).window_samples == 16000
    assert {"torch", "torchaudio", "soundfile"} <= set(export.spec["versions"])
