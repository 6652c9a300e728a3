"""Import a model you already have: a checkpoint in, an export out, served like the demo models.

    python -m train.import_model --modality image --arch resnet50 --weights ckpt.pth --labels labels.txt --name my_model
    python -m train.import_model --modality image --weights model.onnx --labels labels.txt --name my_model_onnx
    python -m train.import_model --modality text --arch text_embedding_bag --weights weights.safetensors \\
        --tokenizer tokenizer.json --labels labels.json --name tickets --data tickets.csv
    ./archive.sh my_model && make serve

--weights takes any form model_defs/checkpoints.py reads: a plain state_dict, a checkpoint dict nesting
one (beside optimizer and epoch entries), a .safetensors file, a TorchScript archive or an ONNX graph;
wrapper prefixes (`module.`, `_orig_mod.`, `model.`) are stripped, and a pickled module is refused
unless --trust-pickle. Nothing is written until the model is known to fit: the weights' keys and
shapes against the architecture's, the model's real output width (one forward pass on a dummy batch)
against the labels, an ONNX graph's input shape against the modality's preprocessed batch. Each
refusal ends with `python -m train.import_model: error: ...` and exit status 2.

With --data, the export is evaluated through the serving preprocessing and runtime (model_defs, as
the handler loads it); the accuracy goes into model.json, and a warning names the likely causes
when it is near chance. model.json's "imported" records the source file's name, size and SHA-256.
"""
import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from model_defs.audio import AudioPreprocessing, front_end
from model_defs.checkpoints import (ONNX, TORCHSCRIPT, CheckpointError, HeadWidthError, ModelFile, file_provenance,
                                    fit_state_dict, load_fitted, read_model_file)
from model_defs.export import (export_spec, format_version_of, meta_architecture, staged_directory, write_export_files,
                               write_spec_and_labels)
from model_defs.image import CHANNEL_ORDERS, IMAGENET_MEAN, IMAGENET_STD, draft_min_side, eval_transform, preprocess_params
from model_defs.onnx_runtime import ONNX_FILE, RUNTIME as ONNX_RUNTIME, OnnxRuntimeModel, all_cores
from model_defs.registry import MODALITIES, available_architectures, build_model, check_architecture
from model_defs.serving import load_served_export
from model_defs.text import PAD_TOKENS, TOKENIZER_FILE, TextEncoder, find_pad_token
from model_defs.torchscript_runtime import RUNTIME as TORCHSCRIPT_RUNTIME, TORCHSCRIPT_FILE, load_torchscript
from train import audio as audio_training
from train import image as image_training
from train import text as text_training
from train.common import REPO_ROOT, CommandError, DataError, class_folders, run, use_all_cores

PROG = "python -m train.import_model"
# TorchServe's rule for a model name (torch-model-archiver refuses any other); the export's folder is the name.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
IMAGE_PRESETS = {"imagenet": {"resize": 256, "crop": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}
# Accuracy counts as near chance below this share of the way from chance to perfect: a quarter. A model
# served with the wrong label order or normalisation lands at chance or just above it; one that merely
# meets harder data than it was trained on stays well above.
NEAR_CHANCE_SHARE = 0.25


def exports_dir() -> Path:
    """Where exports go: $EXPORTS_DIR when set, as archive.sh reads it, else the checkout's exports/."""
    return Path(os.environ.get("EXPORTS_DIR") or REPO_ROOT / "exports")


def json_object(text: str) -> dict:
    """An argparse type for --model-args: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"embed_dim\": 128}}', got {text}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Import a trained model as an export that archive.sh "
                                                            "and make serve serve")
    parser.add_argument("--modality", required=True, choices=MODALITIES, help="what the model classifies")
    parser.add_argument("--weights", required=True, type=Path,
                        help="the model file: a state_dict or a checkpoint dict (.pt, .pth, .bin), .safetensors, "
                             "a TorchScript archive or an ONNX graph")
    parser.add_argument("--labels", required=True, type=Path,
                        help="one label a line, a JSON list, or an index_to_name.json: label i names output i")
    parser.add_argument("--name", required=True, help="the model's name: the export is exports/<name>/")
    parser.add_argument("--arch", help="the registered architecture the weights are for (required for weights; for "
                                       "TorchScript and ONNX, only for text models); an unknown name lists the choices")
    parser.add_argument("--model-args", type=json_object, default={},
                        help="constructor arguments beyond the defaults, as a JSON object: '{\"embed_dim\": 128}'")
    parser.add_argument("--out", type=Path, help="export directory, replaced whole (default exports/<name>, or "
                                                 "$EXPORTS_DIR/<name>)")
    parser.add_argument("--data", type=Path, help="labelled data to evaluate the import on: a folder of class "
                                                  "folders (image, audio), a CSV or JSON Lines file (text)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load a file holding pickled objects (a whole nn.Module): unpickling runs code the "
                             "file names, so only for a file you trust")
    parser.add_argument("--checkpoint-key", help="the key of a checkpoint dict that holds the weights to serve "
                                                 "(default: the first of state_dict, model_state_dict, model, net ...)")
    image = parser.add_argument_group("image preprocessing (default: the imagenet preset)")
    image.add_argument("--preset", choices=sorted(IMAGE_PRESETS), default="imagenet",
                       help="imagenet: resize 256, centre crop 224, ImageNet mean and std; the options below override it")
    image.add_argument("--resize", type=int, help="shorter side before the centre crop")
    image.add_argument("--crop", type=int, help="the square the model sees")
    image.add_argument("--mean", type=float, nargs=3, help="per channel, on the 0-1 scale, in the model's channel order")
    image.add_argument("--std", type=float, nargs=3, help="per channel, on the 0-1 scale, in the model's channel order")
    image.add_argument("--channel-order", choices=CHANNEL_ORDERS, default="RGB",
                       help="BGR for a model trained on OpenCV's decoding (default RGB)")
    audio = parser.add_argument_group("audio preprocessing (default: the bundle's, as train.audio trains)")
    for option in fields(AudioPreprocessing):
        if option.name != "window_policy":
            audio.add_argument(f"--{option.name.replace('_', '-')}", type=int if option.type is int else float,
                               default=option.default, help=f"default {option.default}")
    text = parser.add_argument_group("text preprocessing")
    text.add_argument("--tokenizer", type=Path, help="the model's tokenizer.json (Hugging Face tokenizers); required for text")
    text_defaults = text_training.get_args_parser()
    text.add_argument("--max-tokens", type=int, default=text_defaults.get_default("max_tokens"),
                      help=f"longer texts are truncated to this many tokens (default {text_defaults.get_default('max_tokens')})")
    text.add_argument("--no-lowercase", dest="lowercase", action="store_false", help="keep case (default: case-fold)")
    text.add_argument("--pad-token", help=f"the tokenizer's padding token (default: the first it has of {', '.join(PAD_TOKENS)})")
    return parser


# ---- labels ---------------------------------------------------------------------------------------
def read_labels_file(path: Path) -> List[str]:
    """Labels in output order from one label a line, a JSON list, or an index_to_name.json
    ({"0": "cat"}, or ImageNet's {"0": ["n01440764", "tench"]}); CommandError on a blank or repeated one."""
    if not path.is_file():
        raise CommandError(f"--labels {path}: no such file")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise CommandError(f"--labels {path}: not UTF-8 text ({error})") from None
    if path.suffix.lower() == ".json" or content.lstrip()[:1] in ("[", "{"):
        labels = _json_labels(path, content)
        places = [f"entry {index}" for index in range(len(labels))]
    else:
        labels = content.splitlines()
        places = [f"line {number}" for number in range(1, len(labels) + 1)]
    labels = [label.strip() for label in labels]
    blank = [place for place, label in zip(places, labels) if not label]
    if blank:
        raise CommandError(f"--labels {path}: {', '.join(blank)} {'is' if len(blank) == 1 else 'are'} blank; "
                           "every label must be named (one a line, no blank lines)")
    where: Dict[str, List[str]] = {}
    for place, label in zip(places, labels):
        where.setdefault(label, []).append(place)
    repeated = [f"{label!r} ({' and '.join(found)})" for label, found in where.items() if len(found) > 1]
    if repeated:
        raise CommandError(f"--labels {path}: repeated labels {', '.join(repeated)}; each output needs its own label")
    if len(labels) < 2:
        raise CommandError(f"--labels {path}: {len(labels)} label(s); a classifier has at least 2")
    return labels


def _json_labels(path: Path, content: str) -> List[str]:
    try:
        document = json.loads(content)
    except json.JSONDecodeError as error:
        raise CommandError(f"--labels {path}: not valid JSON ({error})") from None
    if isinstance(document, dict):
        indices = sorted(document, key=lambda key: int(key) if str(key).isdigit() else -1)
        if [str(key) for key in indices] != [str(i) for i in range(len(document))]:
            raise CommandError(f"--labels {path}: an index_to_name.json's keys must be 0 to {len(document) - 1}, "
                               f"one each; found {', '.join(sorted(map(str, document))[:10])}")
        document = [document[key] for key in indices]
        # ImageNet's index file: {"0": ["n01440764", "tench"]}: the last entry is the readable name.
        document = [value[-1] if isinstance(value, list) and value else value for value in document]
    if not isinstance(document, list) or not all(isinstance(label, str) for label in document):
        raise CommandError(f"--labels {path}: expected a JSON list of strings or an index_to_name.json object")
    return document


# ---- preprocessing --------------------------------------------------------------------------------
def image_preprocess(args) -> dict:
    preset = IMAGE_PRESETS[args.preset]
    mean, std = args.mean or preset["mean"], args.std or preset["std"]
    if max(mean) > 1 or max(std) > 1:
        raise CommandError(f"--mean {mean} / --std {std}: give them on the 0-1 scale the image tensors use "
                           "(values on the 0-255 scale divided by 255)")
    if min(std) <= 0:
        raise CommandError(f"--std {std}: every value must be above 0")
    crop = args.crop or preset["crop"]
    resize = args.resize or (preset["resize"] if args.crop is None else round(crop * preset["resize"] / preset["crop"]))
    if resize < crop:
        raise CommandError(f"--resize {resize} is smaller than --crop {crop}: the centre crop must fit in the resized image")
    return preprocess_params(crop, resize, mean, std, args.channel_order)


def describe_image_preprocess(args, params: dict) -> str:
    told = [flag for flag in ("resize", "crop", "mean", "std") if getattr(args, flag) is not None]
    assumed = f"the {args.preset} preset" + (f" but --{', --'.join(told)}" if told else "")
    return (f"resize {params['resize']}, centre crop {params['crop']}, mean {params['mean']}, std {params['std']}, "
            f"{params.get('channel_order', 'RGB')} ({assumed}: set --resize/--crop/--mean/--std/--channel-order "
            "to what the model was trained with)")


def audio_preprocess(args) -> AudioPreprocessing:
    try:
        return AudioPreprocessing(**{option.name: getattr(args, option.name) for option in fields(AudioPreprocessing)
                                     if option.name != "window_policy"})
    except ValueError as error:
        raise CommandError(f"audio preprocessing: {error}") from None


def text_encoder(args) -> TextEncoder:
    from tokenizers import Tokenizer

    if args.tokenizer is None:
        raise CommandError("--tokenizer is required for a text model: the tokenizer.json it was trained with")
    try:
        tokenizer = Tokenizer.from_file(str(args.tokenizer))
    except Exception as error:  # tokenizers raises its own Exception subclass for any unreadable file
        raise CommandError(f"--tokenizer {args.tokenizer}: not a Hugging Face tokenizer.json ({error})") from None
    try:
        pad_token = find_pad_token(tokenizer, args.pad_token)
    except ValueError as error:
        raise CommandError(f"--tokenizer {args.tokenizer}: {error} (--pad-token)") from None
    if args.max_tokens < 1:
        raise CommandError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    return TextEncoder(tokenizer, args.max_tokens, args.lowercase, pad_token)


@dataclass
class Preprocessing:
    """A modality's preprocessing: what model.json records, a sentence saying what was assumed, and
    the text encoder or audio settings the modality needs to make a batch."""

    params: dict
    description: str
    encoder: Optional[TextEncoder] = None
    audio: Optional[AudioPreprocessing] = None


def preprocessing_of(args) -> Preprocessing:
    if args.modality == "image":
        params = image_preprocess(args)
        return Preprocessing(params, describe_image_preprocess(args, params))
    if args.modality == "audio":
        audio = audio_preprocess(args)
        return Preprocessing(audio.to_dict(), f"{audio.sample_rate} Hz, {audio.window_seconds:g} s window, "
                                              f"{audio.n_mels} mel bands (n_fft {audio.n_fft}, hop {audio.hop_length})",
                             audio=audio)
    encoder = text_encoder(args)
    return Preprocessing(encoder.preprocess_params(),
                         f"{args.tokenizer.name} ({encoder.vocab_size} tokens, padding {encoder.pad_token!r}), "
                         f"at most {encoder.max_tokens} tokens, {'case-folded' if encoder.lowercase else 'case kept'}",
                         encoder=encoder)


def model_args_for(args, labels: List[str], preprocessing: Preprocessing) -> dict:
    """The architecture's constructor arguments: what the preprocessing and labels decide, the training
    scripts' defaults for the rest, and --model-args over them."""
    if "num_classes" in args.model_args:
        raise CommandError("--model-args: num_classes comes from --labels (one class a label)")
    if args.modality == "image":
        derived = {"num_classes": len(labels), "image_size": preprocessing.params["crop"]}
    elif args.modality == "audio":
        derived = audio_training.model_args_for(preprocessing.audio, len(labels))
    else:
        defaults = text_training.get_args_parser().parse_args([])
        defaults.arch, defaults.max_tokens = args.arch, preprocessing.encoder.max_tokens
        derived = text_training.model_args_for(defaults, preprocessing.encoder.vocab_size, len(labels),
                                               preprocessing.encoder.pad_id)
    return {**derived, **args.model_args}


# ---- the model's input, as the handler makes it ---------------------------------------------------
def logits_of(model, modality: str, spec: dict) -> Callable:
    """batch → logits, as the modality's handler feeds the model: images [N, 3, crop, crop]; waveforms
    [N, window] through the export's front end; token-id lists through the model's batch_inputs."""
    # The audio front end is built once here, not per batch: building its mel filterbank costs about a
    # tenth of computing a batch of 64 clips' features.
    features = front_end(spec) if modality == "audio" else None

    def logits(batch):
        with torch.inference_mode():
            if modality == "image":
                return model(batch)
            if modality == "audio":
                return model(features(batch))
            return model(**model.batch_inputs(batch))

    return logits


def dummy_batch(modality: str, preprocessing: Preprocessing, size: int = 2):
    generator = torch.Generator().manual_seed(0)
    if modality == "image":
        crop = preprocessing.params["crop"]
        return torch.randn(size, 3, crop, crop, generator=generator)
    if modality == "audio":
        return 0.1 * torch.randn(size, preprocessing.audio.window_samples, generator=generator)
    vocab = preprocessing.encoder.vocab_size
    return [[(7 * item + token) % vocab for token in range(1, 4 + item)] for item in range(size)]


def input_description(modality: str, preprocessing: Preprocessing) -> str:
    if modality == "image":
        crop = preprocessing.params["crop"]
        return f"[batch, 3, {crop}, {crop}] (--crop {crop})"
    if modality == "audio":
        audio = preprocessing.audio
        return (f"[batch, 1, {audio.n_mels}, {audio.num_frames}] log-mel features (--n-mels {audio.n_mels}, "
                f"{audio.num_frames} frames of --hop-length {audio.hop_length} in --window-seconds {audio.window_seconds:g})")
    return "token ids from the model's batch_inputs"


def output_width(model, args, spec: dict, preprocessing: Preprocessing, what: str) -> int:
    """The model's real number of outputs, from one forward pass on a dummy batch of two."""
    try:
        logits = logits_of(model, args.modality, spec)(dummy_batch(args.modality, preprocessing))
    except Exception as error:  # the user's module may fail in any way on an input it was not made for
        raise CommandError(f"{what} fails on the preprocessed batch {input_description(args.modality, preprocessing)}: "
                           f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if logits.dim() != 2 or logits.shape[0] != 2:
        raise CommandError(f"{what} answers a batch of 2 with a tensor of shape {list(logits.shape)}; a classifier "
                           "answers [batch, classes] logits")
    return int(logits.shape[1])


# ---- the three ways in: weights, TorchScript, ONNX ------------------------------------------------------
@dataclass
class Imported:
    """The model ready to serve, before anything is written: the in-memory model (eager weights, or the
    serialized file's runner), the model.json fields that depend on the form, the file to copy."""

    model: object
    arch: Optional[str]
    model_args: dict
    spec_fields: dict                             # model.json's runtime fields ("runtime", "onnx")
    serialized: Optional[Dict[str, Path]] = None  # {file name in the export: the user's file}
    provenance: Optional[dict] = None             # more of model.json's "imported" (prefixes stripped)
    notes: Sequence[str] = ()


def check_arch(args, required_for: Optional[str]) -> None:
    if args.arch is None:
        if required_for:
            raise CommandError(f"--arch is required {required_for}; valid choices: "
                               f"{', '.join(available_architectures(args.modality))}")
        return
    try:
        check_architecture(args.arch, args.modality)
    except ValueError as error:
        raise CommandError(f"--arch: {error}") from None


def import_weights(args, model_file: ModelFile, labels: List[str], preprocessing: Preprocessing) -> Imported:
    check_arch(args, "for a weights file: a state_dict holds tensors, not the architecture that uses them")
    model_args = model_args_for(args, labels, preprocessing)
    try:
        model = build_model(args.arch, modality=args.modality, **model_args)
    except (TypeError, ValueError) as error:
        raise CommandError(f"cannot build {args.arch} with {model_args}: {error}") from None
    try:
        fitted = fit_state_dict(model_file.state_dict, model, arch=args.arch, modality=args.modality,
                                model_args=model_args, source=f"the weights in {args.weights}")
    except HeadWidthError as error:
        raise CommandError(f"{args.weights} has {error.weights_outputs} outputs ({', '.join(error.head_keys)}) but "
                           f"--labels {args.labels} has {len(labels)} labels: give the model's {error.weights_outputs} "
                           "labels in its output order") from None
    except CheckpointError as error:
        raise CommandError(str(error)) from None
    load_fitted(model, fitted).eval()
    notes = [f"stripped the prefix {', '.join(fitted.stripped_prefixes)} from every key"] if fitted.stripped_prefixes else []
    return Imported(model, args.arch, model_args, {}, provenance={"stripped_prefixes": fitted.stripped_prefixes},
                    notes=notes)


def serialized_arch(args, labels: List[str], preprocessing: Preprocessing):
    """(arch, model_args) recorded for a TorchScript or ONNX import: a text model needs its registered
    architecture for batch_inputs; an image or audio graph runs without one."""
    check_arch(args, "for a text model: its batch_inputs (how token ids become input tensors) come from the "
                     "registered architecture" if args.modality == "text" else None)
    return (args.arch, model_args_for(args, labels, preprocessing)) if args.arch else (None, {})


def import_torchscript(args, labels: List[str], preprocessing: Preprocessing) -> Imported:
    arch, model_args = serialized_arch(args, labels, preprocessing)
    spec = {"arch": arch, "modality": args.modality, "model_args": model_args}
    try:
        model = load_torchscript(args.weights, architecture=meta_architecture(spec))
    except Exception as error:  # torch.jit.load raises RuntimeError for any archive it cannot rebuild
        raise CommandError(f"{args.weights} is not a loadable TorchScript archive: {str(error).splitlines()[0]}") from None
    return Imported(model, arch, model_args, {"runtime": TORCHSCRIPT_RUNTIME},
                    serialized={TORCHSCRIPT_FILE: args.weights})


def import_onnx(args, labels: List[str], preprocessing: Preprocessing) -> Imported:
    arch, model_args = serialized_arch(args, labels, preprocessing)
    spec = {"arch": arch, "modality": args.modality, "model_args": model_args}
    # The file is parsed once for both facts, and before ONNX Runtime builds a session: a graph whose
    # weights are in separate files is refused without a session being built on them first.
    proto = read_onnx_proto(args.weights)
    if has_external_data(proto):
        raise CommandError(f"{args.weights} keeps its weights in separate files (ONNX external data); an export "
                           "carries one file: save the graph with them inside (onnx.save(model, path, "
                           "save_as_external_data=False), or torch's ONNXProgram.save(path, external_data=False))")
    try:
        runner = OnnxRuntimeModel(args.weights, threads=all_cores, architecture=meta_architecture(spec),
                                  name=args.name)
    except Exception as error:  # onnxruntime raises its own exception types for a graph it cannot run
        raise CommandError(f"{args.weights}: ONNX Runtime cannot load the graph: {str(error).splitlines()[0]}") from None
    inputs = runner.session.get_inputs()
    front = check_onnx_inputs(args, inputs, preprocessing, runner)
    onnx_fields = {
        "file": ONNX_FILE,
        "opset": onnx_opset(proto),
        "inputs": [node.name for node in inputs],
        "output": runner.session.get_outputs()[0].name,
        "dynamic_axes": {node.name: {str(axis): dim for axis, dim in enumerate(node.shape) if not isinstance(dim, int)}
                         for node in inputs},
        "front_end": front,
        "quantization": None,
        "fixed_batch": 1 if runner.batch_of_one else None,
    }
    notes = ["the graph's batch is fixed at 1: batches run one item at a time"] if runner.batch_of_one else []
    return Imported(runner, arch, model_args, {"runtime": ONNX_RUNTIME, "onnx": onnx_fields},
                    serialized={ONNX_FILE: args.weights}, notes=notes)


def read_onnx_proto(path: Path):
    """The file's ModelProto, without the external data files it may name."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def has_external_data(proto) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(tensor) for tensor in proto.graph.initializer)


def onnx_opset(proto) -> Optional[int]:
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)


def check_onnx_inputs(args, inputs, preprocessing: Preprocessing, runner: OnnxRuntimeModel) -> Optional[str]:
    """CommandError unless the graph takes the modality's preprocessed batch; for audio, which one it
    takes: "log_mel" when the graph has the front end inside (it takes waveforms), else None."""
    shapes = ", ".join(f"{node.name} {_shape(node.shape)}" for node in inputs)
    if args.modality == "text":
        expected = sorted(runner.batch_inputs([[1]]))
        if sorted(node.name for node in inputs) != expected:
            raise CommandError(f"{args.weights} takes the inputs {shapes}; a {args.arch} graph takes "
                               f"{', '.join(expected)} (its batch_inputs)")
        if runner.batch_of_one:
            raise CommandError(f"{args.weights} has a batch fixed at 1 ({shapes}); a text graph must take a dynamic "
                               "batch axis: export it with dynamic shapes")
        return None
    if len(inputs) != 1:
        raise CommandError(f"{args.weights} takes {len(inputs)} inputs ({shapes}); an {args.modality} graph takes one")
    shape = inputs[0].shape
    if args.modality == "image":
        crop = preprocessing.params["crop"]
        candidates = {"": [None, 3, crop, crop]}
    else:
        audio = preprocessing.audio
        candidates = {"": [None, 1, audio.n_mels, audio.num_frames], "log_mel": [None, audio.window_samples]}
    for front, expected in candidates.items():
        if len(shape) == len(expected) and all(want is None or not isinstance(got, int) or got == want
                                               for got, want in zip(shape, expected)):
            break
    else:
        waveforms = (f", or [batch, {preprocessing.audio.window_samples}] waveforms (--sample-rate x --window-seconds)"
                     if args.modality == "audio" else "")
        raise CommandError(f"{args.weights} takes {shapes}; the {args.modality} preprocessing gives "
                           f"{input_description(args.modality, preprocessing)}{waveforms}")
    if isinstance(shape[0], int) and shape[0] != 1:
        raise CommandError(f"{args.weights} has a batch fixed at {shape[0]} ({shapes}): export it with a dynamic "
                           "batch axis, or a batch of 1")
    return front or None


def _shape(shape) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


# ---- evaluation on the user's data ------------------------------------------------------------------
@dataclass
class Evaluation:
    labels: List[str]
    targets: List[int]
    predictions: List[int]
    data: Path
    unit: str

    @property
    def accuracy(self) -> float:
        return sum(t == p for t, p in zip(self.targets, self.predictions)) / len(self.targets)

    @property
    def chance(self) -> float:
        """The accuracy of always answering the data's most common label."""
        return max(Counter(self.targets).values()) / len(self.targets)

    @property
    def near_chance_below(self) -> float:
        return self.chance + NEAR_CHANCE_SHARE * (1 - self.chance)

    @property
    def near_chance(self) -> bool:
        return self.accuracy < self.near_chance_below

    def per_label(self) -> Dict[str, float]:
        totals, hits = Counter(self.targets), Counter(t for t, p in zip(self.targets, self.predictions) if t == p)
        return {self.labels[label]: round(hits[label] / count, 4) for label, count in sorted(totals.items())}

    def mostly_answered(self) -> Dict[int, int]:
        """label → the label its examples are most often answered, for the labels where that is another."""
        answered = Counter(zip(self.targets, self.predictions))
        most = {}
        for (target, predicted), count in answered.most_common():
            most.setdefault(target, predicted)
        return {target: predicted for target, predicted in most.items() if target != predicted}

    def metrics(self) -> dict:
        return {"accuracy": round(self.accuracy, 4), "examples": len(self.targets), "data": str(self.data),
                "chance_accuracy": round(self.chance, 4), "near_chance": self.near_chance,
                "accuracy_per_label": self.per_label()}


def label_indices(names: Sequence[str], labels: List[str], data: Path, what: str) -> List[int]:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"--data {data}: {what} {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} "
                        f"not among the model's labels ({', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''})")
    return [index[name] for name in names]


def evaluate(export, args, spec: dict) -> Evaluation:
    """The export, as model_defs.serving loads it for the handler, on args.data through the serving
    preprocessing: image and audio folders of class folders, a text CSV or JSON Lines file."""
    data, logits = args.data, logits_of(export.model, args.modality, spec)
    predictions, targets = [], []
    if args.modality == "text":
        texts, names = text_training.read_labelled_texts(data)
        targets = label_indices(names, export.labels, data, "labels")
        encoder = TextEncoder.from_export(export.directory, spec["preprocess"])
        for start in range(0, len(texts), 256):
            token_ids = encoder.encode_batch(texts[start:start + 256]).token_ids
            predictions += logits(token_ids).argmax(dim=1).tolist()
        return Evaluation(export.labels, targets, predictions, data, "texts")
    if args.modality == "image":
        names, files = class_folders(data, image_training.IMAGE_SUFFIXES, min_files=1)
    else:
        names, files = class_folders(data, min_files=1)
    classes = label_indices(names, export.labels, data, "class folders")
    samples = [(path, label) for label, paths in zip(classes, files) for path in paths]
    if args.modality == "image":
        params = spec["preprocess"]
        dataset = image_training.ImageFileDataset(samples, eval_transform(params), min_side=draft_min_side(params))
        batches = DataLoader(dataset, batch_size=64)
    else:
        preprocessing = AudioPreprocessing.from_dict(spec["preprocess"])
        waveforms = [(audio_training.read_clip(path, preprocessing), label) for path, label in samples]
        batches = DataLoader(waveforms, batch_size=64)
    for inputs, batch_targets in batches:
        predictions += logits(inputs).argmax(dim=1).tolist()
        targets += batch_targets.tolist()
    return Evaluation(export.labels, targets, predictions, data, "images" if args.modality == "image" else "clips")


def near_chance_warning(evaluation: Evaluation, args, spec: dict) -> str:
    labels = evaluation.labels
    swapped = evaluation.mostly_answered()
    examples = ", ".join(f"{labels[t]!r} mostly answered {labels[p]!r}" for t, p in list(swapped.items())[:3])
    order = ("labels in another order than the model's outputs (--labels: line i names output i)"
             + (f"; here {examples}" if examples else ""))
    causes = [order]
    if args.modality == "image":
        params = spec["preprocess"]
        causes += [f"the wrong mean/std (now {params['mean']} / {params['std']}: --mean, --std) or resize/crop "
                   f"(now {params['resize']}/{params['crop']}: --resize, --crop)",
                   f"RGB vs BGR (now {params.get('channel_order', 'RGB')}: --channel-order BGR for a model trained "
                   "on OpenCV's decoding)"]
    elif args.modality == "audio":
        causes += ["the wrong sample rate, window or mel settings (--sample-rate, --window-seconds, --n-mels ...)"]
    else:
        causes += ["another tokenizer than the model was trained with (--tokenizer), or case folding it did not "
                   "have (--no-lowercase)"]
    causes += ["weights of another model, or a model not trained for these labels"]
    bar = "!" * 78
    return "\n".join([
        bar,
        f"WARNING: accuracy {evaluation.accuracy:.3f} on {len(evaluation.targets)} {evaluation.unit} of {evaluation.data} "
        f"is near chance ({evaluation.chance:.3f}, always answering the most common label; the warning is under "
        f"{evaluation.near_chance_below:.3f}, a quarter of the way from chance to perfect).",
        "The model answers, but not with these labels. Likely causes:",
        *(f"  - {cause}" for cause in causes),
        "The export is written, with this accuracy in its model.json: fix the cause and import again.",
        bar,
    ])


# ---- main ---------------------------------------------------------------------------------------------
def shown_path(path: Path) -> str:
    """`path` as the user would type it from where they are: relative under the working directory."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(args) -> dict:
    started = time.perf_counter()
    use_all_cores()
    if not MODEL_NAME.match(args.name):
        raise CommandError(f"--name {args.name!r}: a model name is letters, digits, '_', '-' and '.', starting with "
                           "a letter or digit (TorchServe's rule)")
    out = args.out or exports_dir() / args.name
    labels = read_labels_file(args.labels)
    preprocessing = preprocessing_of(args)
    try:
        model_file = read_model_file(args.weights, trust_pickle=args.trust_pickle, checkpoint_key=args.checkpoint_key)
    except CheckpointError as error:
        raise CommandError(str(error)) from None
    if model_file.form == TORCHSCRIPT:
        imported = import_torchscript(args, labels, preprocessing)
    elif model_file.form == ONNX:
        imported = import_onnx(args, labels, preprocessing)
    else:
        imported = import_weights(args, model_file, labels, preprocessing)
    partial_spec = {"modality": args.modality, "arch": imported.arch, "model_args": imported.model_args,
                    "preprocess": preprocessing.params, **imported.spec_fields}
    outputs = output_width(imported.model, args, partial_spec, preprocessing, f"the model in {args.weights}")
    if outputs != len(labels):
        raise CommandError(f"the model has {outputs} outputs (one forward pass on a dummy batch) but --labels "
                           f"{args.labels} has {len(labels)} labels: give the model's {outputs} labels in its output order")

    provenance = {**file_provenance(args.weights), "form": model_file.form, "found": model_file.description,
                  **(imported.provenance or {})}
    spec = export_spec(
        name=args.name, modality=args.modality, arch=imported.arch, model_args=imported.model_args,
        preprocess=preprocessing.params, labels=labels, training_args=vars(args),
        packages=("torch", "torchvision", "onnxruntime", "tokenizers", "safetensors"),
        extra_spec={**imported.spec_fields, "imported": provenance},
    )
    extra_files = dict(imported.serialized or {})
    if preprocessing.encoder is not None:
        extra_files[TOKENIZER_FILE] = args.tokenizer
    eager = None if imported.serialized else imported.model
    evaluation = None
    with staged_directory(out) as staging:
        write_export_files(staging, eager, spec, labels, extra_files)
        if args.data is not None:
            # The staged export as the handler loads it: its runtime, its preprocessing, its labels.
            served = load_served_export(staging, modality=args.modality, name=args.name)
            evaluation = evaluate(served, args, spec)
            spec["metrics"] = evaluation.metrics()
            write_spec_and_labels(staging, spec, labels)

    print(f"imported {args.weights} ({model_file.description}); sha256 {provenance['sha256'][:16]}...")
    for note in imported.notes:
        print(f"  {note}")
    print(f"{args.modality} model, {'architecture ' + imported.arch if imported.arch else 'no registered architecture'}"
          f"{', ' + spec.get('runtime', 'torch') + ' runtime'}, {outputs} outputs = {len(labels)} labels from {args.labels}")
    print(f"preprocessing: {preprocessing.description}")
    if evaluation is not None:
        print(f"accuracy on {args.data}: {evaluation.accuracy:.4f} ({len(evaluation.targets)} {evaluation.unit}; "
              f"chance {evaluation.chance:.4f})")
        if evaluation.near_chance:
            print(near_chance_warning(evaluation, args, spec), file=sys.stderr)
    print(f"export: {shown_path(out)} (format {format_version_of(spec)}), {time.perf_counter() - started:.1f}s. "
          f"Serve it: ./archive.sh {args.name} && make serve")
    return spec


if __name__ == "__main__":
    run(main, get_args_parser())
