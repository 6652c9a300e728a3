"""Train the audio classifier and export it to exports/audio_classifier.

    python train/audio.py                      # seeded synthetic sounds (7 classes), about a minute on 2 cores
    python train/audio.py --data DIR           # your clips: DIR/<class name>/<clip>.wav|.flac|.ogg

Every clip, synthetic or yours, goes through model_defs.audio.prepare_clip, the function the handler
calls: synthetic clips are generated at several sample rates, channel counts and sample formats and
written to in-memory WAV, so training sees exactly what serving sees (decode → mono → resample →
pad/crop to the window). The held-out set is generated from a different seed stream (synthetic) or
split off per class (--data); its accuracy is printed and recorded in model.json's metrics.
"""
import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from model_defs.audio import (  # noqa: E402
    AudioInputError,
    AudioPreprocessing,
    LogMelSpectrogram,
    encode_audio,
    prepare_clip,
)
from model_defs.export import write_export  # noqa: E402
from model_defs.registry import build_model  # noqa: E402
from train.common import OPTIMIZERS, check_labels, fit, heldout_split, seed_everything  # noqa: E402

MODEL_NAME = "audio_classifier"
ARCH = "log_mel_cnn"

# ---- synthetic sounds --------------------------------------------------------------------------------
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


def synthetic_dataset(per_class: int, rng: np.random.Generator, preprocessing: AudioPreprocessing) -> Tuple[torch.Tensor, torch.Tensor]:
    """[N, window] waveforms and [N] labels, each clip written to WAV and prepared as the handler would."""
    waveforms, labels = [], []
    for _ in range(per_class):
        for label, sound in enumerate(SOUND_CLASSES):
            clip = generate_clip(sound.name, rng)
            wav_bytes = encode_audio(clip.samples, clip.sample_rate, "WAV", str(rng.choice(SYNTHETIC_SUBTYPES)))
            waveforms.append(prepare_clip(wav_bytes, preprocessing).waveform)
            labels.append(label)
    return torch.stack(waveforms), torch.tensor(labels)


# ---- the user's folder -----------------------------------------------------------------------------------
class DatasetError(Exception):
    """The --data folder cannot be used; the message says why and what is expected."""


LAYOUT = "<class name>/<clip>.wav|.flac|.ogg"


def _audio_files(class_dir: Path) -> List[Path]:
    # Every file counts (no suffix filter): a stray file fails loudly below instead of being skipped
    # silently. Hidden files (.DS_Store, editor swap files) are not the user's data.
    return sorted(
        path for path in class_dir.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(class_dir).parts)
    )


def folder_dataset(root: Path, preprocessing: AudioPreprocessing, heldout_fraction: float, seed: int):
    """(train waveforms, train labels, held-out waveforms, held-out labels, class names) from root/<class>/<file>.

    The split is made per class, so every class is both trained on and evaluated.
    """
    if not root.is_dir():
        raise DatasetError(f"--data {root} is not a directory; expected {root}/{LAYOUT}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    try:
        check_labels([d.name for d in class_dirs])
    except ValueError as error:
        raise DatasetError(f"--data {root}: {error}; expected {root}/{LAYOUT}") from None
    splits = {"train": ([], []), "heldout": ([], [])}
    for label, class_dir in enumerate(class_dirs):
        files = _audio_files(class_dir)
        if len(files) < 2:
            raise DatasetError(
                f"class folder {class_dir} has {len(files)} audio file(s); each class needs at least 2 "
                f"(one to train on, one to evaluate)"
            )
        clips = []
        for path in files:
            try:
                clips.append(prepare_clip(path.read_bytes(), preprocessing).waveform)
            except AudioInputError as error:
                raise DatasetError(f"cannot use {path}: {error}") from None
        for split, indices in zip(("train", "heldout"), heldout_split(len(clips), heldout_fraction, seed + label)):
            waveforms, labels = splits[split]
            waveforms.extend(clips[i] for i in indices)
            labels.extend([label] * len(indices))
    (train_x, train_y), (heldout_x, heldout_y) = splits["train"], splits["heldout"]
    return (torch.stack(train_x), torch.tensor(train_y), torch.stack(heldout_x), torch.tensor(heldout_y),
            [d.name for d in class_dirs])


# ---- training and evaluation -----------------------------------------------------------------------------
def predict_probabilities(model: nn.Module, feature_extractor: nn.Module, waveforms: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The evaluation path: prepared waveforms → log-mel → model → softmax, as the handler computes it."""
    model.eval()
    with torch.inference_mode():
        return torch.cat([
            torch.softmax(model(feature_extractor(chunk)), dim=1) for chunk in waveforms.split(batch_size)
        ])


def per_class_accuracy(probabilities: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> Dict[str, float]:
    hits = probabilities.argmax(dim=1) == labels
    return {
        name: round(hits[labels == index].float().mean().item(), 4)
        for index, name in enumerate(class_names) if (labels == index).any()
    }


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the audio classifier (log-mel CNN)", add_help=add_help)
    parser.add_argument("--data", type=Path, default=None,
                        help=f"folder of class subfolders, DIR/{LAYOUT}; default: generated sounds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "exports" / MODEL_NAME, help="export directory")
    parser.add_argument("--seed", type=int, default=0, help="seed for data generation, split and initialisation")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--train-per-class", type=int, default=200, help="generated training clips per class (demo data only)")
    parser.add_argument("--heldout-per-class", type=int, default=100, help="generated held-out clips per class (demo data only)")
    parser.add_argument("--heldout-fraction", type=float, default=0.2, help="share of each --data class held out for accuracy")
    # One thread by default: this CNN is too small to gain much from intra-op parallelism, and on a
    # machine busy with other work 2 threads measured 27 s per epoch against 3 s for 1 (2 cores).
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (0: one per core)")
    parser.add_argument("--sample-rate", type=int, default=AudioPreprocessing.sample_rate, help="model sample rate (Hz)")
    parser.add_argument("--window-seconds", type=float, default=AudioPreprocessing.window_seconds,
                        help="clip window the model sees; shorter clips are padded, longer ones cropped")
    return parser


def main(args) -> dict:
    started = time.perf_counter()
    seed_everything(args.seed)
    preprocessing = AudioPreprocessing(sample_rate=args.sample_rate, window_seconds=args.window_seconds)
    feature_extractor = LogMelSpectrogram(preprocessing)

    # Preparing a clip is a handful of small tensor ops: with several threads their start-up and
    # synchronisation cost more than the work (35 ms vs 1.5 ms per resample measured on a busy
    # 2-core machine), so clips are prepared on one thread whatever --threads says.
    torch.set_num_threads(1)
    if args.data is None:
        class_names = SYNTHETIC_LABELS
        # Separate seed streams: the held-out clips are never generated from training randomness.
        train_x, train_y = synthetic_dataset(args.train_per_class, np.random.default_rng([args.seed, 0]), preprocessing)
        heldout_x, heldout_y = synthetic_dataset(args.heldout_per_class, np.random.default_rng([args.seed, 1]), preprocessing)
        data_description = f"generated sounds (seed {args.seed})"
    else:
        train_x, train_y, heldout_x, heldout_y, class_names = folder_dataset(args.data, preprocessing, args.heldout_fraction, args.seed)
        data_description = str(args.data)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"{len(class_names)} classes, {len(train_y)} training / {len(heldout_y)} held-out clips from "
          f"{data_description}, {threads} threads, data ready in {time.perf_counter() - started:.0f}s", flush=True)

    def classify(model, batch):
        # Log-mel is computed per batch from the prepared windows, in training as in the handler.
        waveforms, targets = batch
        return model(feature_extractor(waveforms)), targets

    model_args = {"n_mels": preprocessing.n_mels, "num_classes": len(class_names), "channels": [8, 16, 32, 64, 64], "dropout": 0.1}
    model = build_model(ARCH, modality="audio", **model_args)
    loader_generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(TensorDataset(train_x, train_y), batch_size=args.batch_size, shuffle=True,
                              drop_last=len(train_y) > args.batch_size, generator=loader_generator)
    heldout_loader = DataLoader(TensorDataset(heldout_x, heldout_y), batch_size=256)
    metrics = fit(model, train_loader, heldout_loader, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                  optimizer=args.optimizer, forward=classify, label_smoothing=0.05)
    metrics["heldout_accuracy_per_class"] = per_class_accuracy(
        predict_probabilities(model, feature_extractor, heldout_x), heldout_y, class_names)
    metrics.update(heldout_clips=len(heldout_y), train_clips=len(train_y), seed=args.seed, data=data_description,
                   total_seconds=round(time.perf_counter() - started, 1))

    out = write_export(args.out, model, name=MODEL_NAME, modality="audio", arch=ARCH, model_args=model_args,
                       preprocess=preprocessing.to_dict(), labels=list(class_names), metrics=metrics,
                       packages=("torch", "torchaudio", "soundfile"))
    per_class = ", ".join(f"{name} {accuracy:.2f}" for name, accuracy in metrics["heldout_accuracy_per_class"].items())
    print(f"held-out accuracy: {metrics['heldout_accuracy']:.4f} on {len(heldout_y)} clips ({per_class}); "
          f"trained in {metrics['train_seconds']:.0f}s ({metrics['total_seconds']:.0f}s in all); export: {out}")
    return metrics


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        main(arguments)
    except DatasetError as error:
        sys.exit(f"{Path(__file__).name}: error: {error}")
