"""The model an export or archive serves, on the runtime its serialized file names: one dispatch that
the handler (handlers/model_runtime.py) and an import's evaluation (train/import_model.py) share, so
an accuracy measured at import is the served model's.

    weights.pt             torch: the architecture rebuilt from model.json, the state_dict loaded
    model.onnx             ONNX Runtime (model_defs/onnx_runtime.py)
    model.torchscript.pt   torch, the TorchScript archive as it is (model_defs/torchscript_runtime.py)
"""
from pathlib import Path
from typing import Callable, Optional

import torch

from .export import WEIGHTS_FILE, LoadedExport, load_export
from .onnx_runtime import ONNX_FILE, RUNTIME as ONNX_RUNTIME, all_cores, load_onnx_export
from .torchscript_runtime import RUNTIME as TORCHSCRIPT_RUNTIME, TORCHSCRIPT_FILE, load_torchscript_export

TORCH_RUNTIME = "torch"  # model.json's runtime when it names none: an eager export
SERIALIZED_FILES = (ONNX_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE)  # the first an export holds is its model


def serialized_file(model_dir, manifest: Optional[dict] = None) -> Path:
    """The model file of an archive as its manifest names it (archive.sh's --serialized-file); for an
    export folder without a manifest (an import's evaluation, the in-process tests), the first of
    SERIALIZED_FILES it holds."""
    named = ((manifest or {}).get("model") or {}).get("serializedFile")
    if named:
        return Path(model_dir) / named
    return next((Path(model_dir) / name for name in SERIALIZED_FILES if (Path(model_dir) / name).exists()),
                Path(model_dir) / WEIGHTS_FILE)


def runtime_of(serialized: Path) -> str:
    if str(serialized).endswith(".onnx"):
        return ONNX_RUNTIME
    return TORCHSCRIPT_RUNTIME if Path(serialized).name == TORCHSCRIPT_FILE else TORCH_RUNTIME


def load_served_export(model_dir, serialized: Optional[Path] = None, *, device=torch.device("cpu"),
                       threads: Callable[[], int] = all_cores, gpu_id=None, modality: Optional[str] = None,
                       name: Optional[str] = None) -> LoadedExport:
    """The export in `model_dir` on the runtime of its serialized file (default: serialized_file's pick).
    ONNX Runtime takes `threads` and `gpu_id`; the torch runtimes, `device`."""
    serialized = serialized or serialized_file(model_dir)
    runtime = runtime_of(serialized)
    if runtime == ONNX_RUNTIME:
        return load_onnx_export(model_dir, threads=threads, gpu_id=gpu_id, modality=modality, name=name)
    if runtime == TORCHSCRIPT_RUNTIME:
        return load_torchscript_export(model_dir, device, modality=modality)
    return load_export(model_dir, device, modality=modality)
