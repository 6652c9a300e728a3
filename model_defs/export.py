"""The export format that connects training to serving.

exports/<model>/
    weights.pt           plain state_dict (no `module.` / `_orig_mod.` prefixes), loads with weights_only=True
    model.json           arch, model_args, preprocess parameters, labels count, versions, metrics,
                         and the training arguments (so a run can be reproduced from its export)
    index_to_name.json   {"0": "circle", ...}, the format TorchServe's stock classifiers use
    ...                  modality extras (tokenizer.json for text)

An ONNX variant, exports/<model>_onnx/ (and _int8/), has model.onnx in place of weights.pt and the
base export's other files: model_defs/onnx_export.py writes it, model_defs/onnx_runtime.py loads it.
An imported TorchScript archive is model.torchscript.pt (model_defs/torchscript_runtime.py), and an
imported export records where it came from in model.json's "imported" (train/import_model.py).

format_version: 1 for every export a reader of format 1 serves right; 2 (`format_version_of`) for one
it would serve wrongly or fail on obscurely, so that an older bundle refuses it by name instead.
"""
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from .registry import build_model

WEIGHTS_FILE = "weights.pt"
MODEL_JSON = "model.json"
LABELS_FILE = "index_to_name.json"
# The newest format this code reads and writes. An export is written in the oldest format that holds
# it (format_version_of): a plain export stays readable by a bundle that knows only format 1.
EXPORT_FORMAT_VERSION = 2
BASE_FORMAT_VERSION = 1

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added by DataParallel/DDP and torch.compile


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    cleaned = {}
    for key, tensor in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        cleaned[key] = tensor.detach().cpu()
    return cleaned


def package_versions(names) -> Dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _json_value(value: Any) -> str:
    # Training arguments hold paths (--data, --out); any other type JSON lacks is a bug to hear of.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"model.json cannot hold {type(value).__name__} {value!r}")


def format_version_of(spec: dict) -> int:
    """The export format `spec` needs: 2 when a reader of format 1 would mishandle it, else 1."""
    preprocess = spec.get("preprocess") or {}
    needs_format_2 = (
        spec.get("runtime") == "torchscript"               # format 1 readers know weights.pt and model.onnx only
        or spec.get("arch") is None                        # a graph served without a registered architecture
        or preprocess.get("channel_order", "RGB") != "RGB"  # format 1 readers would feed RGB: wrong answers
        or "pad_token" in preprocess                       # format 1 readers look for <pad> only
        or (spec.get("onnx") or {}).get("fixed_batch")     # format 1 readers would send whole batches: a crash
    )
    return EXPORT_FORMAT_VERSION if needs_format_2 else BASE_FORMAT_VERSION


def write_export(
    out_dir,
    model: nn.Module,
    *,
    name: str,
    modality: str,
    arch: str,
    model_args: dict,
    preprocess: dict,
    labels: List[str],
    metrics: Optional[dict] = None,
    training_args: Optional[Mapping[str, Any]] = None,
    extra_files: Optional[Mapping[str, Path]] = None,
    packages=("torch",),
    extra_spec: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write weights, model.json and index_to_name.json (plus extra files) to out_dir, replacing it.

    `training_args` (a script's `vars(args)`; paths are written as strings) is model.json's "training";
    `extra_spec`, more keys of model.json (a fine-tuning's "initialized_from").
    """
    spec = export_spec(name=name, modality=modality, arch=arch, model_args=model_args, preprocess=preprocess,
                       labels=labels, metrics=metrics, training_args=training_args, packages=packages,
                       extra_spec=extra_spec)
    with staged_directory(out_dir) as staging:
        write_export_files(staging, model, spec, labels, extra_files)
    return Path(out_dir)


def export_spec(*, name: str, modality: str, arch: Optional[str], model_args: dict, preprocess: dict,
                labels: List[str], metrics: Optional[dict] = None, training_args: Optional[Mapping[str, Any]] = None,
                packages=("torch",), extra_spec: Optional[Mapping[str, Any]] = None) -> dict:
    """model.json's content (format_version is added when it is written, from what the content needs)."""
    return {
        "name": name,
        "modality": modality,
        "arch": arch,
        "model_args": model_args,
        "preprocess": preprocess,
        "num_labels": len(labels),
        "metrics": metrics or {},
        "training": dict(training_args or {}),
        "versions": package_versions(packages),
        **(extra_spec or {}),
    }


def write_export_files(directory: Path, model: Optional[nn.Module], spec: dict, labels: List[str],
                       extra_files: Optional[Mapping[str, Path]] = None) -> None:
    """An export's files into `directory` (a staged_directory): the model's weights (none for an export
    whose model is a serialized file among `extra_files`), model.json, index_to_name.json, extra files."""
    if model is not None:
        torch.save(clean_state_dict(model.state_dict()), directory / WEIGHTS_FILE)
    write_spec_and_labels(directory, spec, labels)
    for file_name, source in (extra_files or {}).items():
        shutil.copyfile(source, directory / file_name)


@contextmanager
def staged_directory(out_dir):
    """A fresh `.partial/<name>` beside out_dir to fill, swapped in whole for out_dir when the block
    succeeds, so that a crash mid-export never leaves a half-written export behind (nor replaces a
    good one). The staging folder sits one level down in a hidden folder: a run killed outright
    (SIGKILL, the OOM killer) leaves it behind, and there no `exports/*/model.json` glob (archive.sh,
    the live fixture, the Makefile) mistakes it for an export."""
    out_dir = Path(out_dir)
    staging, previous = out_dir.parent / ".partial" / out_dir.name, out_dir.parent / ".partial" / f"{out_dir.name}.old"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(staging.parent)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(previous)  # two renames: out_dir is missing only between them, never half-written
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    _remove_if_empty(staging.parent)


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # another export's staging is in it, or it is gone
        pass


def write_spec_and_labels(directory: Path, spec: dict, labels: List[str]) -> None:
    """model.json and index_to_name.json, as every export (and every ONNX variant of one) has them;
    model.json's format_version is the one its content needs, written first."""
    spec = {"format_version": format_version_of(spec), **{k: v for k, v in spec.items() if k != "format_version"}}
    (directory / MODEL_JSON).write_text(json.dumps(spec, indent=2, default=_json_value) + "\n")
    (directory / LABELS_FILE).write_text(
        json.dumps({str(i): label for i, label in enumerate(labels)}, indent=2) + "\n"
    )


@dataclass
class LoadedExport:
    model: nn.Module
    spec: dict
    labels: List[str]
    directory: Path


def read_labels(export_dir) -> List[str]:
    return labels_in_order(json.loads((Path(export_dir) / LABELS_FILE).read_text()))


def labels_in_order(index_to_name: Mapping[str, str]) -> List[str]:
    """index_to_name.json's {"0": "circle", ...} as the list of labels by class index."""
    return [index_to_name[str(i)] for i in range(len(index_to_name))]


def check_format_version(spec: dict, source) -> dict:
    """`spec` (model.json's content, read from `source`), refused when a newer bundle wrote it: its
    fields may mean what this code does not know, and a model half understood answers wrongly."""
    version = spec.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{source} has no integer format_version ({version!r}): it is not an export's model.json")
    if version > EXPORT_FORMAT_VERSION:
        raise ValueError(f"{source} is export format {version}, newer than this bundle's {EXPORT_FORMAT_VERSION}: "
                         f"update the bundle (git pull, then make setup) to serve it")
    return spec


def read_spec(export_dir, modality: Optional[str] = None) -> dict:
    """model.json, refused when its format is newer than this code; with `modality`, an export of
    another modality is refused before anything is built."""
    path = Path(export_dir) / MODEL_JSON
    spec = check_format_version(json.loads(path.read_text()), path)
    if modality is not None and spec.get("modality") != modality:
        raise ValueError(f"{path} is a {spec.get('modality')!r} export; expected a {modality!r} one")
    return spec


def checked_labels(export_dir, spec: dict) -> List[str]:
    """The labels, refused unless there are as many as model.json says the model has."""
    labels = read_labels(export_dir)
    if len(labels) != spec["num_labels"]:
        raise ValueError(
            f"{Path(export_dir) / LABELS_FILE} has {len(labels)} labels but model.json says {spec['num_labels']}"
        )
    return labels


# What a handler may ask of a model besides calling it, answered by the architecture itself:
# `batch_inputs` turns token ids into the model's input tensors, `max_tokens` bounds a text's length.
INPUT_HELPERS = ("batch_inputs", "max_tokens")


def attach_input_helpers(model, architecture: Optional[nn.Module]):
    """`model` (a serialized graph's runner) given `architecture`'s INPUT_HELPERS, where it has them.
    A meta-device architecture's batch_inputs builds CPU tensors from token ids and reads only plain
    attributes (max_tokens, pad_id), never its weights."""
    for helper in INPUT_HELPERS:
        if architecture is not None and hasattr(architecture, helper):
            setattr(model, helper, getattr(architecture, helper))
    return model


def meta_architecture(spec: dict) -> Optional[nn.Module]:
    """The export's architecture built on the meta device (no weights allocated or initialised), for
    what the handler asks of a model besides calling it (a text model's batch_inputs and max_tokens)
    when a serialized graph is what runs; None for a graph imported without a registered architecture."""
    if spec.get("arch") is None:
        return None
    return build_on_meta(spec["arch"], spec["modality"], spec["model_args"])


def build_on_meta(arch: str, modality: str, model_args: dict, *, or_on_cpu: bool = True) -> nn.Module:
    """`arch` built on the meta device: its shapes and plain attributes, no weights allocated or
    initialised. The one meta build, shared with model_defs/checkpoints.py's shape comparisons.

    torchvision's RegNets read numbers back out of tensors while they are built, which a meta tensor
    does not hold: those are built on the CPU instead (once, at a worker's start or an import), unless
    `or_on_cpu` is False (a caller that would rather skip them, like a scan over every architecture)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notes on GoogLeNet/Inception initialisation
        try:
            with torch.device("meta"):
                return build_model(arch, modality=modality, **model_args)
        except NotImplementedError:  # "Cannot copy out of meta tensor"
            if not or_on_cpu:
                raise
            return build_model(arch, modality=modality, **model_args)


def load_export(export_dir, device="cpu", modality: Optional[str] = None) -> LoadedExport:
    """Rebuild the model from model.json, load its weights, and put it in eval mode on `device`.
    With `modality`, an export of another modality is refused before anything is built."""
    export_dir = Path(export_dir)
    spec = read_spec(export_dir, modality)
    model = build_model(spec["arch"], modality=spec["modality"], **spec["model_args"])
    state_dict = torch.load(export_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict)
    model.to(device).eval()
    return LoadedExport(model=model, spec=spec, labels=checked_labels(export_dir, spec), directory=export_dir)
