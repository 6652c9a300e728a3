"""The export format that connects training to serving.

exports/<model>/
    weights.pt           plain state_dict (no `module.` / `_orig_mod.` prefixes), loads with weights_only=True
    model.json           arch, model_args, preprocess parameters, labels count, versions, metrics,
                         and the training arguments (so a run can be reproduced from its export)
    index_to_name.json   {"0": "circle", ...}, the format TorchServe's stock classifiers use
    ...                  modality extras (tokenizer.json for text)
"""
import json
import os
import shutil
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
EXPORT_FORMAT_VERSION = 1

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


def _package_versions(names) -> Dict[str, str]:
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
) -> Path:
    """Write weights, model.json and index_to_name.json (plus extra files) to out_dir, replacing it.

    `training_args` (a script's `vars(args)`; paths are written as strings) is model.json's "training".
    """
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save(clean_state_dict(model.state_dict()), staging / WEIGHTS_FILE)
    spec = {
        "format_version": EXPORT_FORMAT_VERSION,
        "name": name,
        "modality": modality,
        "arch": arch,
        "model_args": model_args,
        "preprocess": preprocess,
        "num_labels": len(labels),
        "metrics": metrics or {},
        "training": dict(training_args or {}),
        "versions": _package_versions(packages),
    }
    (staging / MODEL_JSON).write_text(json.dumps(spec, indent=2, default=_json_value) + "\n")
    (staging / LABELS_FILE).write_text(
        json.dumps({str(i): label for i, label in enumerate(labels)}, indent=2) + "\n"
    )
    for file_name, source in (extra_files or {}).items():
        shutil.copyfile(source, staging / file_name)
    # Swap in whole so that a crash mid-export never leaves a half-written export behind.
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


@dataclass
class LoadedExport:
    model: nn.Module
    spec: dict
    labels: List[str]
    directory: Path


def read_labels(export_dir) -> List[str]:
    mapping = json.loads((Path(export_dir) / LABELS_FILE).read_text())
    return [mapping[str(i)] for i in range(len(mapping))]


def load_export(export_dir, device="cpu", modality: Optional[str] = None) -> LoadedExport:
    """Rebuild the model from model.json, load its weights, and put it in eval mode on `device`.
    With `modality`, an export of another modality is refused before anything is built."""
    export_dir = Path(export_dir)
    spec = json.loads((export_dir / MODEL_JSON).read_text())
    if modality is not None and spec.get("modality") != modality:
        raise ValueError(f"{export_dir / MODEL_JSON} is a {spec.get('modality')!r} export; expected a {modality!r} one")
    model = build_model(spec["arch"], modality=spec["modality"], **spec["model_args"])
    state_dict = torch.load(export_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict)
    model.to(device).eval()
    labels = read_labels(export_dir)
    if len(labels) != spec["num_labels"]:
        raise ValueError(
            f"{export_dir / LABELS_FILE} has {len(labels)} labels but model.json says {spec['num_labels']}"
        )
    return LoadedExport(model=model, spec=spec, labels=labels, directory=export_dir)
