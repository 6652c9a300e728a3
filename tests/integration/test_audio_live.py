"""audio_classifier through a real TorchServe: raw, multipart and JSON base64 uploads, the window
headers over HTTP, the limits, and scaling through the management API. (A corrupt clip inside a batch:
test_model_faults_live.py.)"""
import base64
from pathlib import Path

import numpy as np
import yaml

from model_defs.audio import encode_audio
from train.synthetic_sounds import generate_clip

MODEL = "audio_classifier"
REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLER_SETTINGS = yaml.safe_load((REPO_ROOT / "configs" / f"{MODEL}.yaml").read_text())["handler"]


def wav_of(class_name: str, seed: int, sample_rate: int = 22050, container: str = "WAV", subtype: str = "PCM_16") -> bytes:
    clip = generate_clip(class_name, np.random.default_rng(seed), sample_rate=sample_rate)
    samples = clip.samples * (0.5 / np.abs(clip.samples).max())  # loud enough for any sample format
    return encode_audio(samples, sample_rate, container, subtype)


def tone_wav(seconds: float, sample_rate: int = 16000) -> bytes:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return encode_audio((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sample_rate)


def top_label(response) -> str:
    assert response.status_code == 200, response.text
    return next(iter(response.json()))


def test_prediction_through_raw_multipart_and_json(server):
    clip = wav_of("chirp_up", seed=31)
    raw = server.predict(MODEL, data=clip, headers={"Content-Type": "audio/wav"})
    multipart = server.predict(MODEL, files={"data": ("clip.wav", clip, "audio/wav")})
    as_json = server.predict(MODEL, json={"data": base64.b64encode(clip).decode()})
    for response in (raw, multipart, as_json):
        assert top_label(response) == "chirp_up"
        body = response.json()
        assert len(body) == HANDLER_SETTINGS["top_k"]
        assert list(body.values()) == sorted(body.values(), reverse=True)
        assert response.headers["X-Audio-Window"] in ("padded", "cropped", "exact")
    assert raw.json() == multipart.json() == as_json.json()


def test_flac_and_ogg_uploads_are_classified(server):
    for container, subtype in (("FLAC", "PCM_24"), ("OGG", "VORBIS")):
        response = server.predict(MODEL, data=wav_of("square_wave", seed=32, sample_rate=48000, container=container, subtype=subtype))
        assert top_label(response) == "square_wave", container


def test_window_headers_over_http(server):
    padded = server.predict(MODEL, data=tone_wav(0.5, 44100))
    exact = server.predict(MODEL, data=tone_wav(1.0, 8000))
    cropped = server.predict(MODEL, data=tone_wav(2.5, 16000))
    for response in (padded, exact, cropped):
        assert top_label(response) == "tone"
    assert (padded.headers["X-Audio-Window"], padded.headers["X-Audio-Duration"], padded.headers["X-Audio-Window-Start"]) == ("padded", "0.5", "0")
    assert (exact.headers["X-Audio-Window"], exact.headers["X-Audio-Duration"]) == ("exact", "1")
    assert (cropped.headers["X-Audio-Window"], cropped.headers["X-Audio-Duration"]) == ("cropped", "2.5")
    assert 0 <= float(cropped.headers["X-Audio-Window-Start"]) <= 1.5


def test_the_largest_accepted_clip_passes_the_server_as_json_base64(server):
    # max_seconds of 48 kHz stereo float WAV is just under max_bytes; base64 in JSON adds a third,
    # which the server's max_request_size must still let through to the handler.
    t = np.arange(HANDLER_SETTINGS["max_seconds"] * 48000) / 48000
    stereo = np.repeat((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[:, None], 2, axis=1)
    content = encode_audio(stereo, 48000, "WAV", "FLOAT")
    assert len(content) <= HANDLER_SETTINGS["max_bytes"]
    response = server.predict(MODEL, json={"data": base64.b64encode(content).decode()})
    assert top_label(response) == "tone"
    assert response.headers["X-Audio-Duration"] == str(HANDLER_SETTINGS["max_seconds"])


def test_limits_are_answered_with_413_and_a_json_body(server):
    too_long = encode_audio(np.zeros(int((HANDLER_SETTINGS["max_seconds"] + 1) * 8000), np.float32), 8000, "FLAC", "PCM_16")
    response = server.predict(MODEL, data=too_long)
    assert response.status_code == 413 and response.json()["type"] == "AudioTooLong", response.text

    too_big = b"RIFF" + bytes(HANDLER_SETTINGS["max_bytes"])  # under the server's max_request_size, over the handler's
    response = server.predict(MODEL, data=too_big)
    assert response.status_code == 413 and response.json()["type"] == "PayloadTooLarge", response.text

    empty = encode_audio(np.zeros(0, np.float32), 16000)
    response = server.predict(MODEL, data=empty)
    assert response.status_code == 400 and response.json()["type"] == "EmptyAudio", response.text


def test_describe_then_scale_to_two_workers_and_back(server):
    server.check_model_config(MODEL)
    server.scale_to(MODEL, 2)
    assert top_label(server.predict(MODEL, data=wav_of("noise_burst", 51))) == "noise_burst"
    server.scale_to(MODEL, 1)
    assert top_label(server.predict(MODEL, data=wav_of("chirp_down", 52))) == "chirp_down"
