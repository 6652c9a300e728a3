"""The model a worker serves, on the runtime its archive's serialized file names (model_defs/serving.py):
weights.pt is rebuilt in torch from model.json and model.torchscript.pt is an imported TorchScript
archive served as it is (both on cuda:{gpu_id} when TorchServe gave the worker a GPU); model.onnx runs
on ONNX Runtime with the worker's thread share."""
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from handler_settings import PRECISIONS
from model_defs.export import LoadedExport
from model_defs.serving import TORCH_RUNTIME, load_served_export, runtime_of, serialized_file
from model_defs.onnx_runtime import RUNTIME as ONNX_RUNTIME

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    export: LoadedExport
    device: torch.device                      # where the handler puts its tensors
    explanations_unavailable: Optional[str]   # why /explanations cannot be served, as the 400's message


def choose_device(gpu_id) -> torch.device:
    """cuda:{gpu_id} when TorchServe gave this worker a GPU, else CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        device = torch.device(f"cuda:{gpu_id}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def load_model(model_name: str, model_dir: str, manifest: dict, gpu_id, modality: str, precision: str,
               threads: Callable[[], int]) -> LoadedModel:
    """The archive's model for a `modality` handler; `threads()` is the worker's current thread share."""
    serialized = serialized_file(model_dir, manifest)
    runtime = runtime_of(serialized)
    if runtime != ONNX_RUNTIME:
        device = choose_device(gpu_id)
        export = load_served_export(model_dir, serialized, device=device, modality=modality)
        return LoadedModel(export, device, None if runtime == TORCH_RUNTIME else torchscript_explanations(export, model_name))
    if PRECISIONS[precision] is not None:
        raise ValueError(f"handler: precision {precision} is for the torch runtime; {model_name} is "
                         "an ONNX graph and runs at the precision it was exported in: set precision: fp32")
    export = load_served_export(model_dir, serialized, threads=threads, gpu_id=gpu_id, modality=modality, name=model_name)
    logger.info("%s: ONNX Runtime on %s", model_name, export.model.device)
    source = (export.spec.get("source") or {}).get("name")
    # torch stays on the CPU: ONNX Runtime takes host arrays (its CUDA provider copies them to its GPU).
    return LoadedModel(export, torch.device("cpu"), f"{model_name} runs on ONNX Runtime, which Captum cannot take "
                       "gradients through: " + (f"explanations come from the eager model it was exported from, "
                                                f"/explanations/{source}" if source else
                                                "import the model's weights instead of its ONNX graph to explain it"))


def torchscript_explanations(export: LoadedExport, model_name: str) -> Optional[str]:
    """Why a TorchScript model cannot be explained, or None: Captum differentiates through it, but a
    text model's explanations split it where the tokens are still apart (token_embeddings), which a
    TorchScript archive does not expose."""
    if export.spec["modality"] == "text":
        return (f"{model_name} is a TorchScript archive, whose token embeddings the explanation cannot reach: "
                "import the model's weights (a state_dict of a registered text architecture) to explain it")
    return None
