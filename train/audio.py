"""Train the audio classifier and export it to exports/audio_classifier.

    python -m train.audio                      # seeded synthetic sounds (7 classes), about a minute on 2 cores
    python -m train.audio --data DIR           # your clips: DIR/<class name>/<clip>.wav|.flac|.ogg
    python -m train.audio --epochs 0 --out DIR # untrained: seeded initial weights
    python -m train.audio --data DIR --init-weights exports/audio_classifier   # continue from an export

Every clip, synthetic or yours, goes through model_defs.audio.prepare_clip, the function the handler
calls: synthetic clips (train/synthetic_sounds.py) are generated at several sample rates, channel
counts and sample formats and written to in-memory WAV, so training sees exactly what serving sees
(decode → mono → resample → pad/crop to the window). The held-out set is generated from a different
seed stream (synthetic) or split off per class (--data); its accuracy is printed and recorded in
model.json's metrics.
"""
import argparse
import time
from pathlib import Path
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from model_defs.audio import AudioInputError, AudioPreprocessing, LogMelSpectrogram, prepare_clip
from model_defs.export import write_export
from model_defs.registry import build_model
from train import synthetic_sounds
from train.init_weights import add_init_arguments, initial_weights, start_from
from train.common import (DataError, add_training_arguments, architecture_of, class_folders, export_metrics, fit,
                          fraction, per_class_heldout_split, print_summary, run, seed_everything, untrained_metrics,
                          use_threads)

MODEL_NAME = "audio_classifier"
DEFAULT_ARCH = "log_mel_cnn"
LAYOUT = "<class name>/<clip>.wav|.flac|.ogg"


# ---- the data ----------------------------------------------------------------------------------------
def stacked(examples: Iterable[Tuple[torch.Tensor, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(waveform, label) pairs → [N, window] waveforms and [N] labels."""
    waveforms, labels = zip(*examples)
    return torch.stack(waveforms), torch.tensor(labels)


def synthetic_dataset(per_class: int, rng: np.random.Generator, preprocessing: AudioPreprocessing) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generated WAV files, each prepared as the handler would prepare an upload."""
    return stacked((prepare_clip(wav_bytes, preprocessing).waveform, label)
                   for wav_bytes, label in synthetic_sounds.generate_wav_files(per_class, rng))


def read_clip(path: Path, preprocessing: AudioPreprocessing) -> torch.Tensor:
    """One of the user's files, prepared as the handler would; DataError naming it when it does not decode."""
    try:
        return prepare_clip(path.read_bytes(), preprocessing).waveform
    except AudioInputError as error:
        raise DataError(f"cannot use {path}: {error}") from None


def folder_dataset(root: Path, preprocessing: AudioPreprocessing, heldout_fraction: float, seed: int):
    """(train waveforms, train labels, held-out waveforms, held-out labels, class names) from
    root/<class>/<file>, split per class so that every class is both trained on and evaluated."""
    # No suffix filter: a stray file fails loudly in read_clip instead of being skipped silently.
    class_names, files_per_class = class_folders(root)
    train, heldout = per_class_heldout_split(files_per_class, heldout_fraction, seed)
    train_x, train_y = stacked((read_clip(path, preprocessing), label) for path, label in train)
    heldout_x, heldout_y = stacked((read_clip(path, preprocessing), label) for path, label in heldout)
    return train_x, train_y, heldout_x, heldout_y, class_names


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


def model_args_for(preprocessing: AudioPreprocessing, num_classes: int) -> dict:
    """log_mel_cnn's constructor arguments, as this script trains it (and an import assumes them)."""
    return {"n_mels": preprocessing.n_mels, "num_classes": num_classes, "channels": [8, 16, 32, 64, 64], "dropout": 0.1}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.audio", description="Train the audio classifier (log-mel CNN)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"folder of class subfolders, DIR/{LAYOUT}; default: generated sounds")
    parser.add_argument("--arch", type=architecture_of("audio"),
                        help=f"a registered audio architecture (default {DEFAULT_ARCH}, a CNN over log-mel spectrograms; "
                             "or the --init-weights export's)")
    parser.add_argument("--train-per-class", type=int, default=200, help="generated training clips per class (demo data only)")
    parser.add_argument("--heldout-per-class", type=int, default=100, help="generated held-out clips per class (demo data only)")
    parser.add_argument("--heldout-fraction", type=fraction, default=0.2, help="share of each --data class held out for accuracy")
    parser.add_argument("--sample-rate", type=int, default=AudioPreprocessing.sample_rate, help="model sample rate (Hz)")
    parser.add_argument("--window-seconds", type=float, default=AudioPreprocessing.window_seconds,
                        help="clip window the model sees; shorter clips are padded, longer ones cropped (with "
                             "--init-weights of an export: the export's, as its sample rate)")
    add_init_arguments(parser, "audio")
    # One thread: this CNN is too small to gain much from intra-op parallelism, and on a machine busy
    # with other work 2 threads measured 27 s per epoch against 3 s for 1 (2 cores).
    return add_training_arguments(parser, MODEL_NAME, epochs=8, batch_size=64, lr=3e-3, weight_decay=1e-4, threads=1)


def main(args) -> dict:
    started = time.perf_counter()
    seed_everything(args.seed)
    initial = initial_weights(args, "audio", DEFAULT_ARCH)
    if initial is not None and initial.spec is not None:
        # The export's features, which its weights were trained on (a CNN's filters are per mel band).
        preprocessing = AudioPreprocessing.from_dict(initial.spec["preprocess"])
        args.sample_rate, args.window_seconds = preprocessing.sample_rate, preprocessing.window_seconds
    else:
        preprocessing = AudioPreprocessing(sample_rate=args.sample_rate, window_seconds=args.window_seconds)
    feature_extractor = LogMelSpectrogram(preprocessing)

    data_description = str(args.data) if args.data else f"generated sounds (seed {args.seed})"
    if args.epochs == 0:  # the class names only: no clip is generated or read
        class_names = class_folders(args.data)[0] if args.data else synthetic_sounds.SYNTHETIC_LABELS
    else:
        # Preparing a clip is a handful of small tensor ops: with several threads their start-up and
        # synchronisation cost more than the work (35 ms vs 1.5 ms per resample measured on a busy
        # 2-core machine), so clips are prepared on one thread whatever --threads says.
        torch.set_num_threads(1)
        if args.data is None:
            class_names = synthetic_sounds.SYNTHETIC_LABELS
            # Separate seed streams: the held-out clips are never generated from training randomness.
            train_x, train_y = synthetic_dataset(args.train_per_class, np.random.default_rng([args.seed, 0]), preprocessing)
            heldout_x, heldout_y = synthetic_dataset(args.heldout_per_class, np.random.default_rng([args.seed, 1]), preprocessing)
        else:
            train_x, train_y, heldout_x, heldout_y, class_names = folder_dataset(args.data, preprocessing,
                                                                                 args.heldout_fraction, args.seed)
    threads = use_threads(args.threads)

    def classify(model, batch):
        # Log-mel is computed per batch from the prepared windows, in training as in the handler.
        waveforms, targets = batch
        return model(feature_extractor(waveforms)), targets

    if initial is not None and initial.spec is not None:
        model_args = {**initial.spec["model_args"], "num_classes": len(class_names)}
    else:
        model_args = model_args_for(preprocessing, len(class_names))
    model = build_model(args.arch, modality="audio", **model_args)
    groups, extra_spec = None, None
    if initial is not None:
        groups, extra_spec = start_from(model, initial, args, modality="audio", model_args=model_args,
                                        labels=class_names, lr=args.lr)
    if args.epochs == 0:
        metrics = untrained_metrics(args.seed, data=data_description, started=started, init_weights=args.init_weights)
        detail = ""
    else:
        print(f"{len(class_names)} classes, {len(train_y)} training / {len(heldout_y)} held-out clips from "
              f"{data_description}, {threads} threads, data ready in {time.perf_counter() - started:.0f}s", flush=True)
        loader_generator = torch.Generator().manual_seed(args.seed)
        train_loader = DataLoader(TensorDataset(train_x, train_y), batch_size=args.batch_size, shuffle=True,
                                  drop_last=len(train_y) > args.batch_size, generator=loader_generator)
        heldout_loader = DataLoader(TensorDataset(heldout_x, heldout_y), batch_size=256)
        fitted = fit(model, train_loader, heldout_loader, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                     optimizer=args.optimizer, forward=classify, label_smoothing=0.05, parameter_groups=groups)
        fitted["heldout_accuracy_per_class"] = per_class_accuracy(
            predict_probabilities(model, feature_extractor, heldout_x), heldout_y, class_names)
        metrics = export_metrics(fitted, train_examples=len(train_y), heldout_examples=len(heldout_y),
                                 data=data_description, started=started)
        per_class = fitted["heldout_accuracy_per_class"].items()
        detail = f" ({', '.join(f'{name} {accuracy:.2f}' for name, accuracy in per_class)})"

    out = write_export(args.out, model, name=MODEL_NAME, modality="audio", arch=args.arch, model_args=model_args,
                       preprocess=preprocessing.to_dict(), labels=list(class_names), metrics=metrics,
                       training_args=vars(args), packages=("torch", "torchaudio", "soundfile"), extra_spec=extra_spec)
    print_summary(metrics, "clips", out, detail=detail)
    return metrics


if __name__ == "__main__":
    run(main, get_args_parser())
