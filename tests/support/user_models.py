"""A user's trained models, as they would bring them: the demo exports' trained weights in a plain
torchvision / bundle module (the "original module"), saved in every form people save models in, with
labelled data to evaluate them on and the probabilities the original module gives for given inputs.
The import tests (tests/unit/test_import_model.py) and the live round trips
(tests/integration/test_bring_a_model_live.py) share them.

Trained weights, not random ones: a random network answers nearly uniform probabilities, which would
hide a preprocessing or label mistake inside a 1e-5 tolerance.
"""
import csv
import io
import json
import warnings
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from model_defs.audio import AudioPreprocessing, LogMelSpectrogram, encode_audio, prepare_clip
from model_defs.export import load_export, read_labels
from model_defs.image import draft_min_side, eval_transform, load_image
from model_defs.registry import build_model
from model_defs.text import TOKENIZER_FILE, TextEncoder
from train import synthetic_shapes
from train.synthetic_messages import generate_messages, split_templates
from train.synthetic_sounds import SYNTHETIC_LABELS, generate_clip

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPORTS = REPO_ROOT / "exports"
MAX_PIXELS = 40_000_000
# The forms of a weights file, as `save_weights` writes them (TorchScript and ONNX are `save_torchscript`,
# `save_onnx`).
WEIGHT_FORMS = ("plain", "nested", "prefixed", "safetensors")


def demo_export(name: str) -> Path:
    path = EXPORTS / name
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"{path} is missing: run `make exports` (make test does it first)")
    return path


# ---- the original modules ------------------------------------------------------------------------
def image_module() -> nn.Module:
    """The demo image model (resnet18, 6 shapes, 32 px) as the user's own torchvision ResNet."""
    model = torchvision.models.resnet18(num_classes=6)
    model.load_state_dict(torch.load(demo_export("image_classifier") / "weights.pt", weights_only=True))
    return model.eval()


def text_module() -> nn.Module:
    export = load_export(demo_export("text_classifier"))
    model = build_model(export.spec["arch"], modality="text", **export.spec["model_args"])
    model.load_state_dict(export.model.state_dict())
    return model.eval()


def audio_module() -> nn.Module:
    export = load_export(demo_export("audio_classifier"))
    model = build_model(export.spec["arch"], modality="audio", **export.spec["model_args"])
    model.load_state_dict(export.model.state_dict())
    return model.eval()


def labels_of(name: str) -> List[str]:
    return read_labels(demo_export(name))


# ---- saving them as people do ---------------------------------------------------------------------
def save_weights(model: nn.Module, form: str, path: Path) -> Path:
    """`form`: plain (torch.save of the state_dict), nested (a training checkpoint: the state_dict under
    model_state_dict beside optimizer and epoch, keys prefixed by DataParallel), prefixed (torch.compile's
    prefix under Lightning's "state_dict" with its "model." attribute), safetensors."""
    state = model.state_dict()
    if form == "plain":
        torch.save(state, path)
    elif form == "nested":
        torch.save({"epoch": 12, "model_state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1}]}, "best_accuracy": 0.93}, path)
    elif form == "prefixed":
        torch.save({"state_dict": {f"model._orig_mod.{k}": v for k, v in state.items()}, "global_step": 400,
                    "hyper_parameters": {"lr": 0.01}}, path)
    elif form == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        raise ValueError(f"unknown form {form!r}; valid choices: {', '.join(WEIGHT_FORMS)}")
    return path


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.14 calls TorchScript deprecated; users still have such files
        torch.jit.trace(model, example).save(str(path))
    return path


def save_onnx(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> Path:
    """An ONNX graph as torch.onnx.export writes it: a dynamic batch axis, or the example's fixed batch."""
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=["input"], dynamic_shapes=shapes, dynamo=True,
                                    verbose=False)
    program.save(str(path), external_data=False)
    return path


def write_labels_text(labels: Sequence[str], path: Path) -> Path:
    path.write_text("\n".join(labels) + "\n")
    return path


# ---- inputs and what the original module answers for them ------------------------------------------------
def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shape_images(count: int, seed: int, size: int = 48) -> List[bytes]:
    images, _ = synthetic_shapes.generate(count, size, seed)
    return [png_bytes(image) for image in images]


def image_probabilities(model: nn.Module, contents: Sequence[bytes], preprocess: dict) -> torch.Tensor:
    """The module's softmax on images decoded and transformed as the serving preprocessing does."""
    transform = eval_transform(preprocess)
    batch = torch.stack([transform(load_image(content, MAX_PIXELS, min_side=draft_min_side(preprocess)))
                         for content in contents])
    with torch.inference_mode():
        return torch.softmax(model(batch), dim=1)


def wav_clips(per_class: int, seed: int) -> List[tuple]:
    """(WAV bytes, label index) pairs, `per_class` of each demo sound class."""
    rng = np.random.default_rng([seed, 7])
    return [(encode_audio(clip.samples, clip.sample_rate), label)
            for _ in range(per_class) for label, name in enumerate(SYNTHETIC_LABELS)
            for clip in [generate_clip(name, rng)]]


def audio_probabilities(model: nn.Module, contents: Sequence[bytes], preprocess: dict) -> torch.Tensor:
    preprocessing = AudioPreprocessing.from_dict(preprocess)
    waveforms = torch.stack([prepare_clip(content, preprocessing).waveform for content in contents])
    with torch.inference_mode():
        return torch.softmax(model(LogMelSpectrogram(preprocessing)(waveforms)), dim=1)


def support_messages(per_intent: int, seed: int):
    """(texts, labels) of generated support messages from held-out templates."""
    _, heldout_templates = split_templates(0)
    return generate_messages(heldout_templates, per_intent, seed)


def text_probabilities(model: nn.Module, texts: Sequence[str], tokenizer_dir: Path, preprocess: dict) -> torch.Tensor:
    encoder = TextEncoder.from_export(tokenizer_dir, preprocess)
    with torch.inference_mode():
        return torch.softmax(model(**model.batch_inputs(encoder.encode_batch(texts).token_ids)), dim=1)


# ---- labelled data in the layouts --data takes ----------------------------------------------------------
def shapes_folder(root: Path, per_class: int, seed: int = 7) -> Path:
    return synthetic_shapes.write_folder(root, per_class, 32, seed)


def sounds_folder(root: Path, per_class: int, seed: int = 7) -> Path:
    for index, (content, label) in enumerate(wav_clips(per_class, seed)):
        folder = root / SYNTHETIC_LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:04d}.wav").write_bytes(content)
    return root


def messages_csv(path: Path, per_intent: int, seed: int = 5) -> Path:
    texts, labels = support_messages(per_intent, seed)
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    return path


def index_to_name(labels: Sequence[str]) -> Dict[str, str]:
    return {str(i): label for i, label in enumerate(labels)}


def write_json(value, path: Path) -> Path:
    path.write_text(json.dumps(value))
    return path


def tokenizer_of(name: str) -> Path:
    return demo_export(name) / TOKENIZER_FILE
