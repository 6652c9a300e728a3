"""A procedurally generated, seeded sound data set: seven classes of synthetic sounds (tones,
rising and falling chirps, pulse trains, square waves, chords, noise bursts). The demo audio model
trains on it because nothing can be downloaded here, and anyone can make a test clip for it
(`generate_clip("chirp_up", rng)`, or a sweep from sox).

Each clip varies pitch, loudness, duration, onset, fades, background noise, sample rate and channel
count, and is written to an in-memory WAV file of a varied sample format: training then decodes it
through the same path as an upload to the handler.
"""
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from model_defs.audio import encode_audio

# Rates clips are generated at: telephone to studio, including the 44.1 kHz family whose ratio to
# 16 kHz is not an integer, so the resampler is exercised the way real uploads exercise it.
SYNTHETIC_SAMPLE_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)
# Sample formats the in-memory WAV files use, weighted towards the most common one.
SYNTHETIC_SUBTYPES = ("PCM_16", "PCM_16", "PCM_24", "FLOAT")
# Every tonal component stays below this, so clips at 8 kHz hold the same sound as at 48 kHz.
MAX_COMPONENT_HZ = 3600.0


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _fade(signal: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    ramp = min(len(signal) // 2, int(seconds * sample_rate))
    if ramp:
        envelope = np.ones(len(signal))
        envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
        envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
        signal = signal * envelope
    return signal


def _tone(rng, t, sample_rate):
    return np.sin(2 * np.pi * _log_uniform(rng, 150, 3000) * t + rng.uniform(0, 2 * np.pi))


def _exponential_chirp(rng, t, rising: bool):
    low = _log_uniform(rng, 150, 800)
    high = min(low * rng.uniform(2.5, 4.5), MAX_COMPONENT_HZ)
    start, end = (low, high) if rising else (high, low)
    duration = t[-1] + (t[1] - t[0]) if len(t) > 1 else 1.0
    growth = np.log(end / start)
    phase = 2 * np.pi * start * duration / growth * (np.exp(growth * t / duration) - 1)
    return np.sin(phase)


def _chirp_up(rng, t, sample_rate):
    return _exponential_chirp(rng, t, rising=True)


def _chirp_down(rng, t, sample_rate):
    return _exponential_chirp(rng, t, rising=False)


def _square_wave(rng, t, sample_rate):
    # Band-limited (odd harmonics at 1/n) so it does not alias differently at each sample rate.
    fundamental = _log_uniform(rng, 100, 800)
    signal = np.zeros_like(t)
    for harmonic in range(1, 1000, 2):
        if harmonic * fundamental > MAX_COMPONENT_HZ:
            break
        signal += np.sin(2 * np.pi * harmonic * fundamental * t) / harmonic
    return signal


def _chord(rng, t, sample_rate):
    root = _log_uniform(rng, 150, 700)
    third = 2 ** (4 / 12) if rng.random() < 0.5 else 2 ** (3 / 12)  # major or minor triad
    return sum(
        rng.uniform(0.6, 1.0) * np.sin(2 * np.pi * root * ratio * t + rng.uniform(0, 2 * np.pi))
        for ratio in (1.0, third, 2 ** (7 / 12))
    )


def _colored_noise(rng, length):
    # White noise through a one-pole low-pass of random strength (from hiss to rumble), applied as
    # a convolution with its impulse response truncated at -120 dB instead of a Python loop.
    noise = rng.standard_normal(length)
    pole = rng.uniform(0.0, 0.9)
    if pole > 0:
        impulse_response = pole ** np.arange(int(np.log(1e-6) / np.log(pole)) + 1)
        noise = np.convolve(noise, impulse_response)[:length]
    return noise


def _pulse_train(rng, t, sample_rate):
    rate = rng.uniform(5, 25)
    decay = rng.uniform(0.001, 0.003)
    click_length = int(6 * decay * sample_rate) + 1
    click = rng.standard_normal(click_length) * np.exp(-np.arange(click_length) / (decay * sample_rate))
    signal = np.zeros_like(t)
    for onset in np.arange(rng.uniform(0, 1 / rate), t[-1], 1 / rate):
        start = int(onset * sample_rate)
        end = min(len(signal), start + click_length)
        signal[start:end] += click[: end - start]
    return signal


def _noise_burst(rng, t, sample_rate):
    noise = _colored_noise(rng, len(t))
    attack = rng.uniform(0.005, 0.03)
    envelope = np.minimum(t / attack, 1.0) * np.exp(-t / rng.uniform(0.05, 0.5))
    return noise * envelope


@dataclass(frozen=True)
class SoundClass:
    name: str
    synthesize: Callable  # (rng, t, sample_rate) -> signal
    durations: Tuple[float, float]  # seconds of sound, uniform


SOUND_CLASSES = (
    SoundClass("tone", _tone, (0.3, 1.8)),
    SoundClass("chirp_up", _chirp_up, (0.3, 1.8)),
    SoundClass("chirp_down", _chirp_down, (0.3, 1.8)),
    SoundClass("pulse_train", _pulse_train, (0.4, 1.8)),
    SoundClass("square_wave", _square_wave, (0.3, 1.8)),
    SoundClass("chord", _chord, (0.3, 1.8)),
    SoundClass("noise_burst", _noise_burst, (0.1, 0.8)),
)
SYNTHETIC_LABELS = [sound.name for sound in SOUND_CLASSES]


@dataclass
class GeneratedClip:
    samples: np.ndarray  # [frames, channels] float32 in [-1, 1]
    sample_rate: int


def generate_clip(class_name: str, rng: np.random.Generator, sample_rate: Optional[int] = None, channels: Optional[int] = None) -> GeneratedClip:
    """One random clip of a class: varied pitch, loudness, duration, onset, background noise, rate and channels."""
    sound = next((s for s in SOUND_CLASSES if s.name == class_name), None)
    if sound is None:
        raise ValueError(f"unknown sound class {class_name!r}; valid choices: {', '.join(SYNTHETIC_LABELS)}")
    sample_rate = sample_rate or int(rng.choice(SYNTHETIC_SAMPLE_RATES))
    duration = rng.uniform(*sound.durations)
    t = np.arange(int(duration * sample_rate)) / sample_rate
    # Recorded sounds fade in and out; synthesized or cut files often start and stop abruptly,
    # with a click at each end. Both are trained, so a click alone does not make a pulse train.
    fade_seconds = 0.0 if rng.random() < 0.3 else rng.uniform(0.002, 0.03)
    foreground = _fade(sound.synthesize(rng, t, sample_rate), sample_rate, fade_seconds)
    foreground *= 10 ** (rng.uniform(-30, -1) / 20) / max(np.abs(foreground).max(), 1e-9)  # peak -30..-1 dBFS

    onset = int(rng.uniform(0.0, 0.3) * sample_rate)
    tail = int(rng.uniform(0.0, 0.2) * sample_rate)
    mono = np.zeros(onset + len(foreground) + tail)
    mono[onset:onset + len(foreground)] = foreground
    # Background noise 15-60 dB below the sound, except in a fifth of the clips: files made by a
    # synthesizer (sox, numpy) are digitally clean, and the model must know those too.
    if rng.random() >= 0.2:
        foreground_rms = math.sqrt(float(np.mean(foreground ** 2)) + 1e-20)
        mono += rng.standard_normal(len(mono)) * foreground_rms * 10 ** (-rng.uniform(15, 60) / 20)

    channels = channels or (2 if rng.random() < 0.25 else 1)
    gains = rng.uniform(0.6, 1.0, size=channels) if channels > 1 else np.ones(1)
    samples = np.clip(mono[:, None] * gains[None, :], -1.0, 1.0).astype(np.float32)
    return GeneratedClip(samples, sample_rate)


def generate_wav_files(per_class: int, rng: np.random.Generator) -> Iterator[Tuple[bytes, int]]:
    """`per_class` rounds of one clip of every class, each as WAV file bytes (a random sample
    format) with its label, an index into SYNTHETIC_LABELS."""
    for _ in range(per_class):
        for label, sound in enumerate(SOUND_CLASSES):
            clip = generate_clip(sound.name, rng)
            yield encode_audio(clip.samples, clip.sample_rate, "WAV", str(rng.choice(SYNTHETIC_SUBTYPES))), label
