"""model_defs.audio without an export: decoding of every accepted format, mixdown, resampling, the
pad/crop policy, the log-mel features and the CNN's contract."""
import io
import json

import numpy as np
import pytest
import soundfile
import torch

from model_defs.audio import (
    ACCEPTED_FORMATS,
    AudioPreprocessing,
    AudioTooLongError,
    EmptyAudioError,
    LogMelSpectrogram,
    NonFiniteSamplesError,
    SamplesOutOfRangeError,
    UndecodableAudioError,
    UnsupportedAudioFormatError,
    UnsupportedSampleRateError,
    WINDOW_CROPPED,
    WINDOW_EXACT,
    WINDOW_PADDED,
    decode_audio,
    encode_audio,
    fit_to_window,
    prepare_clip,
    resample,
    resampling_ratio,
)
from model_defs.registry import build_model

PREPROCESSING = AudioPreprocessing()


def sine(frequency, seconds, sample_rate, amplitude=0.5, channels=1):
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    mono = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def dominant_frequency(samples: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(samples.double() * torch.hann_window(len(samples), dtype=torch.float64)).abs()
    return float(torch.argmax(spectrum)) * sample_rate / len(samples)


# ---- decoding ----------------------------------------------------------------------------------------
# Worst-case error of each sample format for a full-scale-safe signal: half a quantisation step.
LOSSLESS = [
    ("WAV", "PCM_U8", 1 / 128),
    ("WAV", "PCM_16", 1 / 32768),
    ("WAV", "PCM_24", 1 / 2 ** 23),
    ("WAV", "PCM_32", 1 / 2 ** 31),
    ("WAV", "FLOAT", 1e-7),
    ("FLAC", "PCM_16", 1 / 32768),
    ("FLAC", "PCM_24", 1 / 2 ** 23),
    ("WAV", "DOUBLE", 1e-7),
    ("WAVEX", "PCM_16", 1 / 32768),
    ("RF64", "PCM_16", 1 / 32768),
    ("W64", "FLOAT", 1e-7),
]


@pytest.mark.parametrize("container,subtype,tolerance", LOSSLESS, ids=[f"{c}-{s}" for c, s, _ in LOSSLESS])
def test_lossless_formats_decode_to_the_samples_written(container, subtype, tolerance):
    samples = sine(440, 0.3, 22050, amplitude=0.7)
    decoded = decode_audio(encode_audio(samples, 22050, container, subtype))
    assert (decoded.format, decoded.subtype, decoded.sample_rate, decoded.channels) == (container, subtype, 22050, 1)
    assert decoded.samples.dtype == torch.float32 and decoded.samples.shape == (len(samples),)
    assert np.abs(decoded.samples.numpy() - samples).max() <= tolerance + 1e-7


LOSSY = [("OGG", "VORBIS", 44100), ("OGG", "OPUS", 48000), ("WAV", "ULAW", 8000), ("WAV", "ALAW", 8000)]


@pytest.mark.parametrize("container,subtype,rate", LOSSY, ids=[f"{c}-{s}" for c, s, _ in LOSSY])
def test_lossy_formats_decode_to_the_same_sound(container, subtype, rate):
    samples = sine(440, 0.5, rate, amplitude=0.5)
    decoded = decode_audio(encode_audio(samples, rate, container, subtype))
    assert (decoded.format, decoded.subtype, decoded.sample_rate) == (container, subtype, rate)
    assert abs(len(decoded.samples) - len(samples)) < 64
    assert dominant_frequency(decoded.samples, rate) == pytest.approx(440, abs=3)
    interior = decoded.samples[len(decoded.samples) // 4: -len(decoded.samples) // 4]  # codecs ring at the edges
    assert float(interior.pow(2).mean().sqrt()) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


@pytest.mark.parametrize("channels", [2, 6])
def test_channels_are_averaged_to_mono(channels):
    rng = np.random.default_rng(0)
    samples = rng.uniform(-0.5, 0.5, size=(1000, channels)).astype(np.float32)
    decoded = decode_audio(encode_audio(samples, 16000, "WAV", "FLOAT"))
    assert decoded.channels == channels
    np.testing.assert_allclose(decoded.samples.numpy(), samples.mean(axis=1), atol=1e-6)


def test_opposite_channels_cancel_and_a_silent_channel_halves():
    left = sine(300, 0.1, 16000)
    cancelled = decode_audio(encode_audio(np.stack([left, -left], axis=1), 16000, "WAV", "FLOAT"))
    assert float(cancelled.samples.abs().max()) < 1e-7
    halved = decode_audio(encode_audio(np.stack([left, np.zeros_like(left)], axis=1), 16000, "WAV", "FLOAT"))
    np.testing.assert_allclose(halved.samples.numpy(), left / 2, atol=1e-7)


def test_long_multichannel_clips_are_decoded_in_blocks_without_losing_frames():
    # 8 channels x 20 s at 48 kHz is 7.7 M samples: several decode blocks.
    samples = np.tile(sine(100, 20.0, 48000, amplitude=0.25)[:, None], (1, 8))
    decoded = decode_audio(encode_audio(samples, 48000, "WAV", "PCM_16"))
    assert len(decoded.samples) == len(samples)
    np.testing.assert_allclose(decoded.samples.numpy(), samples[:, 0], atol=1 / 32768 + 1e-7)


@pytest.mark.parametrize("content,error", [
    pytest.param(b"definitely not audio" * 20, UndecodableAudioError, id="garbage"),
    pytest.param(encode_audio(sine(440, 0.2, 16000), 16000)[:30], UndecodableAudioError, id="truncated-header"),
    pytest.param(encode_audio(sine(440, 0.2, 16000), 16000, "AIFF", "PCM_16"), UnsupportedAudioFormatError, id="aiff"),
    pytest.param(encode_audio(np.zeros(0, np.float32), 16000), EmptyAudioError, id="zero-frames"),
    pytest.param(encode_audio(np.array([0.1, np.nan, 0.2], np.float32), 16000, "WAV", "FLOAT"), NonFiniteSamplesError, id="nan"),
    pytest.param(encode_audio(np.array([0.1, -np.inf, 0.2], np.float32), 16000, "WAV", "FLOAT"), NonFiniteSamplesError, id="inf"),
    pytest.param(encode_audio(np.array([0.1, 32767.0], np.float32), 16000, "WAV", "FLOAT"), SamplesOutOfRangeError, id="int-scale-float"),
    pytest.param(encode_audio(sine(440, 0.1, 400_000), 400_000, "WAV", "PCM_16"), UnsupportedSampleRateError, id="rate-400k"),
])
def test_unusable_files_raise_the_error_naming_the_problem(content, error):
    with pytest.raises(error):
        decode_audio(content, max_seconds=30)


def test_accepted_formats_are_named_when_a_format_is_refused():
    with pytest.raises(UnsupportedAudioFormatError, match="AIFF audio is not accepted; accepted formats: WAV, .*FLAC, OGG"):
        decode_audio(encode_audio(sine(440, 0.2, 16000), 16000, "AIFF", "PCM_16"))
    assert {"WAV", "FLAC", "OGG"} <= set(ACCEPTED_FORMATS)


def test_corrupt_flac_frames_are_undecodable():
    flac = bytearray(encode_audio(sine(440, 1.0, 16000) + 0.01 * np.random.default_rng(0).standard_normal(16000).astype(np.float32),
                                  16000, "FLAC", "PCM_16"))
    flac[len(flac) // 2:len(flac) // 2 + 2000] = bytes(range(256)) * 7 + bytes(208)
    with pytest.raises(UndecodableAudioError, match="corrupt"):
        decode_audio(bytes(flac))


def test_duration_limit_is_inclusive_and_checked_before_decoding():
    exactly_limit = encode_audio(np.zeros(2 * 8000, np.float32), 8000)
    assert decode_audio(exactly_limit, max_seconds=2).duration_seconds == 2
    with pytest.raises(AudioTooLongError, match="2.00 s long, over the limit of 1.5 s"):
        decode_audio(exactly_limit, max_seconds=1.5)


# ---- resampling ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000, 96000, 192000])
def test_standard_rates_resample_exactly(rate):
    orig, new = resampling_ratio(rate, 16000)
    assert new * rate == orig * 16000


@pytest.mark.parametrize("rate", [44101, 47999, 12345, 383_999, 1001])
def test_odd_rates_use_a_small_kernel_and_stay_within_a_tenth_of_a_percent(rate):
    orig, new = resampling_ratio(rate, 16000)
    assert orig <= 1000 and new <= 1000
    assert (new / orig) / (16000 / rate) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 44101])
def test_resampling_keeps_pitch_and_duration(rate):
    resampled = resample(torch.from_numpy(sine(1000, 0.5, rate)), rate, 16000)
    assert len(resampled) == pytest.approx(8000, abs=2)
    assert dominant_frequency(resampled, 16000) == pytest.approx(1000, abs=4)


def test_content_above_the_new_nyquist_is_removed_not_aliased():
    resampled = resample(torch.from_numpy(sine(11000, 0.5, 48000)), 48000, 16000)
    interior = resampled[100:-100]  # away from the transients of the clip's abrupt start and end
    assert float(interior.abs().max()) < 0.01  # aliased, 11 kHz would come back as 5 kHz at amplitude 0.5


# ---- the window ------------------------------------------------------------------------------------------
def test_short_clips_are_padded_with_silence_at_the_end():
    samples = torch.ones(600)
    window, fit, start = fit_to_window(samples, 1000)
    assert (fit, start) == (WINDOW_PADDED, 0)
    assert torch.equal(window[:600], samples) and not window[600:].any()


def test_exact_clips_are_unchanged():
    samples = torch.randn(1000)
    window, fit, start = fit_to_window(samples, 1000)
    assert (fit, start) == (WINDOW_EXACT, 0) and torch.equal(window, samples)


@pytest.mark.parametrize("event_start", [0, 1234, 4000])
def test_long_clips_are_cropped_to_their_loudest_window(event_start):
    samples = 0.001 * torch.randn(5000, generator=torch.Generator().manual_seed(0))
    samples[event_start:event_start + 800] += 0.5  # a loud event shorter than the window
    window, fit, start = fit_to_window(samples, 1000)
    assert fit == WINDOW_CROPPED and len(window) == 1000
    assert start <= event_start and event_start + 800 <= start + 1000
    assert torch.equal(window, samples[start:start + 1000])


def test_prepare_clip_reports_the_original_duration_and_window():
    event = np.concatenate([np.zeros(44100, np.float32), sine(500, 0.4, 44100), np.zeros(44100, np.float32)])
    clip = prepare_clip(encode_audio(np.stack([event, event], axis=1), 44100), PREPROCESSING, max_seconds=30)
    assert clip.waveform.shape == (PREPROCESSING.window_samples,)
    assert clip.window_fit == WINDOW_CROPPED
    assert clip.duration_seconds == pytest.approx(2.4)
    assert 0.4 <= clip.window_start_seconds <= 1.0  # the window covers the tone at 1.0-1.4 s
    assert (clip.source.sample_rate, clip.source.channels) == (44100, 2)


# ---- features and model -----------------------------------------------------------------------------------
def test_no_mel_filter_is_empty():
    filterbank = LogMelSpectrogram(PREPROCESSING).mel.mel_scale.fb
    assert filterbank.shape[1] == PREPROCESSING.n_mels
    assert (filterbank.sum(dim=0) > 0).all()


def test_features_are_batched_log_mel_in_float32_even_under_autocast():
    extractor = LogMelSpectrogram(PREPROCESSING)
    waveforms = torch.randn(3, PREPROCESSING.window_samples) * 0.1
    features = extractor(waveforms)
    assert features.shape == (3, 1, PREPROCESSING.n_mels, PREPROCESSING.num_frames)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_features = extractor(waveforms)
    assert autocast_features.dtype == torch.float32 and torch.equal(autocast_features, features)
    silence = extractor(torch.zeros(1, PREPROCESSING.window_samples))
    assert torch.allclose(silence, torch.log(torch.tensor(PREPROCESSING.log_floor)))


def test_preprocessing_round_trips_through_json_and_rejects_unknown_keys():
    values = json.loads(json.dumps(PREPROCESSING.to_dict()))
    assert AudioPreprocessing.from_dict(values) == PREPROCESSING
    with pytest.raises(ValueError, match="unknown audio preprocessing parameters \\['n_mfcc'\\]"):
        AudioPreprocessing.from_dict({**values, "n_mfcc": 13})
    with pytest.raises(ValueError, match="window_policy"):
        AudioPreprocessing(window_policy="centre")


def test_the_cnn_is_built_by_name_and_checks_its_input():
    model = build_model("log_mel_cnn", modality="audio", n_mels=40, num_classes=5, channels=[4, 8]).eval()
    assert model(torch.randn(2, 1, 40, 101)).shape == (2, 5)
    assert model(torch.randn(1, 1, 40, 37)).shape == (1, 5)  # any number of frames
    with pytest.raises(ValueError, match=r"expected log-mel input \[batch, 1, 40, frames\]"):
        model(torch.randn(2, 1, 64, 101))


def test_soundfile_writes_what_the_tests_claim():
    # Guards the tests above: the files they build really are in the named container and subtype.
    info = soundfile.info(io.BytesIO(encode_audio(sine(440, 0.1, 8000, channels=6), 8000, "WAV", "PCM_U8")))
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_U8", 6, 8000)
