"""Runs a handler in-process the way a TorchServe worker does, without Java: the unit tests' harness,
and the benchmark's in-process baseline (bench/in_process.py).

`load_handler` builds the worker's Context (system properties, model-config, real metrics cache)
around a real export; `worker_row` turns one HTTP request into the row the worker would hand the
handler (JSON parsed, text/* decoded to str with its bytes fallback); `run_batch` calls
`handler.handle` on a batch and reads back each item's status, headers and body.
"""
import importlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

import ts

REPO_ROOT = Path(__file__).resolve().parents[2]
# Handlers import their shared modules (batch_handler, ...) and `model_defs` top-level, as they do inside an archive.
for _path in (REPO_ROOT, REPO_ROOT / "handlers"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
METRICS_YAML = Path(ts.__file__).parent / "configs" / "metrics.yaml"


def load_handler(handler_module: str, export_dir, model_name: str, model_yaml=None, tmp_dir=None, gpu_id=None):
    """Instantiate handlers/<handler_module>.py's handler on a copy of export_dir, as an archive would lay it
    out; `gpu_id` as TorchServe passes it to a worker on a GPU host (None: CPU)."""
    model_dir = Path(tmp_dir) / model_name if tmp_dir else Path(export_dir)
    if tmp_dir:
        shutil.copytree(export_dir, model_dir, dirs_exist_ok=True)
    if model_yaml is None:
        model_yaml = yaml.safe_load((REPO_ROOT / "configs" / f"{model_name}.yaml").read_text())
    metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    metrics.initialize_cache()
    metrics.model_name = model_name
    context = Context(
        model_name, str(model_dir), {"model": {"modelName": model_name}}, model_yaml.get("batchSize", 1),
        gpu_id, ts.__version__, True, metrics, model_yaml,
    )
    handler = handler_class(importlib.import_module(handler_module))()
    handler.initialize(context)
    return handler, context


def handler_module(modality: str) -> str:
    """The handlers/ module that serves a modality (model.json's "modality"), as archive.sh picks it."""
    return f"{modality}_classifier_handler"


def handler_class(module) -> type:
    """The handler a modality's module defines: its one class that derives from BatchClassifierHandler.
    Matched by the base's name along the MRO, not by a hook's name or the class object, so that
    moving or renaming the shared base's modules and hooks leaves the harness working."""
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and obj.__module__ == module.__name__
             and any(base.__name__ == "BatchClassifierHandler" for base in obj.__mro__[1:])]
    if len(found) != 1:
        raise LookupError(f"{module.__name__} defines {len(found)} BatchClassifierHandler subclasses "
                          f"({', '.join(cls.__name__ for cls in found) or 'none'}); expected one")
    return found[0]


def worker_row(content, content_type="application/octet-stream", field="body") -> dict:
    """The row TorchServe's worker builds from a request body (or a multipart field named `field`)."""
    if isinstance(content, str):
        content = content.encode("utf-8")
    value = bytearray(content)
    if content_type == "application/json":
        try:
            value = json.loads(bytes(value).decode("utf-8"))
        except Exception:
            pass
    elif content_type.startswith("text"):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {field: value}


@dataclass
class ItemResponse:
    status: int
    headers: Dict[str, str]
    body: object  # the parsed JSON answer


def run_batch(handler, context, rows: List[dict], explain: Sequence[bool] = (),
              headers: Sequence[Dict[str, str]] = (), kserve_route: bool = False) -> List[ItemResponse]:
    """Requests as TorchServe's frontend hands them over from /predictions, or /explanations where
    `explain[i]`: with the `explain` and `url_path` headers it adds there. `kserve_route`: from its
    KServe routes instead (/v1/models/<m>:predict or :explain, /v2/models/<m>/infer), which add no
    `url_path` (protocols.on_kserve_route). `headers[i]` are request i's own HTTP headers."""
    explain = list(explain) or [False] * len(rows)
    headers = list(headers) or [{} for _ in rows]
    route = {} if kserve_route else {"url_path": ""}
    context.request_processor = [RequestProcessor({**own, "explain": str(flag), **route})
                                 for flag, own in zip(explain, headers)]
    context.request_ids = {i: f"request-{i}" for i in range(len(rows))}
    context.metrics.request_ids = context.request_ids
    outputs = handler.handle(rows, context)
    assert isinstance(outputs, list) and len(outputs) == len(rows), "one answer per request"
    responses = []
    for index, output in enumerate(outputs):
        status, _ = context.get_response_status(index)
        body = json.loads(output) if isinstance(output, (str, bytes)) else json.loads(json.dumps(output))
        responses.append(ItemResponse(status=status, headers=dict(context.get_response_headers(index)), body=body))
    return responses


def predict(loaded_handler, *rows: dict) -> List[ItemResponse]:
    """`run_batch` for a (handler, context) pair as `load_handler` returns it."""
    handler, context = loaded_handler
    return run_batch(handler, context, list(rows))


def explain(loaded_handler, *rows: dict) -> List[ItemResponse]:
    """`run_batch` with every request sent to /explanations."""
    handler, context = loaded_handler
    return run_batch(handler, context, list(rows), explain=[True] * len(rows))


def single(loaded_handler, row: dict) -> ItemResponse:
    (response,) = predict(loaded_handler, row)
    return response


def top_label(response: ItemResponse) -> str:
    assert response.status == 200, response.body
    return next(iter(response.body))
