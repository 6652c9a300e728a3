"""The model a worker serves, on the runtime its archive's serialized file names: weights.pt is
rebuilt in torch from model.json (on cuda:{gpu_id} when TorchServe gave the worker a GPU),
model.onnx runs on ONNX Runtime with the worker's thread share."""
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from handler_settings import PRECISIONS
from model_defs.export import LoadedExport, load_export
from model_defs.onnx_runtime import is_onnx_model_file, load_onnx_export, serialized_file

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
    if not is_onnx_model_file(serialized_file(model_dir, manifest)):
        device = choose_device(gpu_id)
        return LoadedModel(load_export(model_dir, device, modality=modality), device, None)
    if PRECISIONS[precision] is not None:
        raise ValueError(f"handler: precision {precision} is for the torch runtime; {model_name} is "
                         "an ONNX graph and runs at the precision it was exported in: set precision: fp32")
    export = load_onnx_export(model_dir, threads=threads, gpu_id=gpu_id, modality=modality, name=model_name)
    logger.info("%s: ONNX Runtime on %s", model_name, export.model.device)
    # torch stays on the CPU: ONNX Runtime takes host arrays (its CUDA provider copies them to its GPU).
    return LoadedModel(export, torch.device("cpu"), (
        f"{model_name} runs on ONNX Runtime, which Captum cannot take gradients through: explanations come from "
        f"the eager model it was exported from, /explanations/{export.spec['source']['name']}"))
