"""An ONNX export as the handler's model: an ONNX Runtime session behind the eager model's call signature.

`OnnxRuntimeModel(...)(images)` or `(token_ids=..., offsets=...)` takes the tensors the eager model
takes and returns a torch tensor of logits, so a handler's `collate`/`forward` (and a text model's
`batch_inputs`) are one code path for both runtimes. What TorchServe's BaseHandler ONNX path does
not do, this does:

- threads: intra-op threads are this worker's share of the cores, the same share torch gets
  (`threads` is read before every call; the session is rebuilt when the share changes);
- GPU: the CUDA execution provider on the worker's `gpu_id` when the installed onnxruntime has it,
  else a log line saying the model runs on the CPU (pytorch/serve#2559);
- a callable, not a bare session;
- a graph exported with a fixed batch of 1 (many are: an exporter's example input was one image)
  runs a batch one item at a time, instead of failing every batch of two or more.

onnxruntime is imported only when a session is built, so an eager-only server never loads it.
"""
import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .export import LoadedExport, attach_input_helpers, checked_labels, meta_architecture, read_spec

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
RUNTIME = "onnxruntime"  # model.json's "runtime" for an ONNX export; an eager export has none
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


def execution_providers(gpu_id, available: Sequence[str]) -> list:
    """ONNX Runtime providers, most preferred first: CUDA on `gpu_id` when TorchServe gave the worker a
    GPU and the installed onnxruntime has the CUDA provider (onnxruntime-gpu), then the CPU."""
    if gpu_id is not None and CUDA_PROVIDER in available:
        return [(CUDA_PROVIDER, {"device_id": int(gpu_id)}), CPU_PROVIDER]
    return [CPU_PROVIDER]


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    # Host memory, contiguous: ONNX Runtime reads numpy buffers in place. On the CUDA provider it
    # copies them to its GPU itself; a batch is a few MB, far cheaper than the forward pass.
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


class OnnxRuntimeModel:
    """An ONNX graph as a callable: positional arguments map to the graph's inputs in order, keyword
    arguments by name, and the first output comes back as a float torch tensor on the CPU."""

    def __init__(self, path, *, threads: Callable[[], int], gpu_id=None, architecture: Optional[torch.nn.Module] = None,
                 name: str = "model"):
        import onnxruntime

        self.path, self.threads, self.name = Path(path), threads, name
        available = onnxruntime.get_available_providers()
        self.providers = execution_providers(gpu_id, available)
        self.on_gpu = self.providers[0] != CPU_PROVIDER
        if gpu_id is not None and not self.on_gpu:
            logger.warning("%s: TorchServe gave this worker GPU %s, but the installed onnxruntime %s has no %s "
                           "(it has %s): the model runs on the CPU. Install onnxruntime-gpu to run it on the GPU.",
                           name, gpu_id, onnxruntime.__version__, CUDA_PROVIDER, ", ".join(available))
        self.session, self.session_threads = None, 0
        self.follow_threads()
        self.input_names: List[str] = [graph_input.name for graph_input in self.session.get_inputs()]
        self.batch_of_one = fixed_batch_of_one(self.session.get_inputs())
        attach_input_helpers(self, architecture)

    def eval(self) -> "OnnxRuntimeModel":
        """As nn.Module.eval, so evaluation loops take either runtime: a graph always runs in eval mode."""
        return self

    @property
    def device(self) -> str:
        return f"cuda:{self.providers[0][1]['device_id']}" if self.on_gpu else "cpu"

    def follow_threads(self) -> None:
        """(Re)build the session when this worker's share of the cores has changed.

        ONNX Runtime fixes a session's thread pool when it is built, so following TorchServe's scaling
        means a new session: about a tenth of a second for these models (the weights are read again),
        once per scaling event, against every later batch running on the wrong number of threads
        (oversubscribed cores when workers were added, idle ones when they were removed).
        """
        threads = max(1, int(self.threads()))
        if threads == self.session_threads:
            return
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # One graph at a time per worker: these graphs are one chain of operators, and TorchServe's
        # parallelism is its workers, so a second (inter-op) pool would only compete for the same cores.
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads sleep instead of spinning: the cores are shared with the other workers
        # and with this worker's own decoding between batches, which a spinning pool would slow.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=self.providers)
        if self.session_threads:
            logger.info("%s: ONNX Runtime session rebuilt for %d intra-op threads (was %d)",
                        self.name, threads, self.session_threads)
        self.session_threads = threads

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        if len(args) > len(self.input_names):
            raise TypeError(f"{self.name} takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                            f"got {len(args)} positional arguments")
        feeds = dict(zip(self.input_names, args))
        unknown = set(kwargs) - set(self.input_names)
        missing = set(self.input_names) - set(feeds) - set(kwargs)
        if unknown or missing:
            raise TypeError(f"{self.name} takes the inputs {', '.join(self.input_names)}; "
                            f"unknown: {sorted(unknown)}, missing: {sorted(missing)}")
        feeds.update(kwargs)
        self.follow_threads()
        arrays = {name: _as_array(tensor) for name, tensor in feeds.items()}
        batch = len(next(iter(arrays.values()))) if self.batch_of_one else 1
        if batch > 1:
            # Item by item, each the batch of one the graph was exported for.
            return torch.cat([self._run({name: array[item:item + 1] for name, array in arrays.items()})
                              for item in range(batch)])
        return self._run(arrays)

    def _run(self, arrays: dict) -> torch.Tensor:
        (logits, *_) = self.session.run(None, arrays)
        return torch.from_numpy(logits)


def fixed_batch_of_one(graph_inputs) -> bool:
    """Whether every input of the graph (ONNX Runtime's NodeArg list) has a first axis fixed at 1."""
    return all(len(node.shape) > 0 and node.shape[0] == 1 for node in graph_inputs)


def onnx_model(export_dir, spec: dict, *, threads: Callable[[], int], gpu_id=None,
               name: Optional[str] = None) -> OnnxRuntimeModel:
    """The OnnxRuntimeModel of export_dir's model.onnx, with `spec`'s architecture's input helpers
    (the weights are in the graph)."""
    return OnnxRuntimeModel(Path(export_dir) / ONNX_FILE, threads=threads, gpu_id=gpu_id,
                            architecture=meta_architecture(spec), name=name or spec.get("name", Path(export_dir).name))


def load_onnx_export(export_dir, *, threads: Callable[[], int], gpu_id=None, modality: Optional[str] = None,
                     name: Optional[str] = None) -> LoadedExport:
    """An ONNX export (exports/<name>_onnx, _int8) as LoadedExport, its model an OnnxRuntimeModel."""
    export_dir = Path(export_dir)
    spec = read_spec(export_dir, modality)
    if spec.get("runtime") != RUNTIME:
        raise ValueError(f"{export_dir / ONNX_FILE} is served by ONNX Runtime, but its model.json has "
                         f"runtime {spec.get('runtime')!r}, not {RUNTIME!r}: it is not an ONNX export's model.json")
    model = onnx_model(export_dir, spec, threads=threads, gpu_id=gpu_id, name=name)
    return LoadedExport(model=model, spec=spec, labels=checked_labels(export_dir, spec), directory=export_dir)


def all_cores() -> int:
    """`threads` for a process that is alone on the machine (an export's checks, tests): every core."""
    return os.cpu_count() or 1
