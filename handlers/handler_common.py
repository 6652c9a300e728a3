"""What every modality's handler shares: payload extraction, device and thread choice, per-item
errors and top-k formatting, wrapped in one BaseHandler subclass that works on whole batches.

A modality handler subclasses `BatchClassifierHandler` and overrides only `prepare_payload` (the
request's content in, one model-ready item out; or `prepare_item`, to see the request's whole row)
and, where items are not same-shaped tensors, `collate`, `forward` and `batch_headers`. TorchServe
imports handler modules top-level from the archive root, so this module is shipped flat beside them
(archive.sh) and imported as `handler_common`. TorchServe's loader also requires a handler module
to define exactly one class: keep helper classes out of handler modules (here, or in model_defs).
"""
import base64
import binascii
import http
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from ts.torch_handler.base_handler import BaseHandler

from model_defs.export import load_export

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class ItemError(Exception):
    """One request of a batch is unusable; it gets `status` and a JSON body, its neighbours are served."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def body(self) -> dict:
        return {"code": self.status, "type": self.error_type, "message": self.message}


def payload_too_large(what: str, size: int, limit: int, unit: str = "bytes") -> ItemError:
    return ItemError(413, "PayloadTooLarge", f"{what} is {size} {unit}, over the limit of {limit} {unit}")


def extract_payload(row: Dict[str, Any]):
    """The request's content as TorchServe's worker hands it over.

    A raw body arrives under "body", a multipart form field under its own name (usually "data"). The
    worker has already parsed application/json bodies into Python objects and decoded text/* bodies
    to str (falling back to bytes when they are not valid UTF-8); anything else is a bytearray.
    """
    for key in ("data", "body"):
        if key in row and row[key] is not None:
            return row[key]
    for value in row.values():  # a multipart upload under another field name, e.g. -F file=@x.jpg
        if value is not None:
            return value
    raise ItemError(400, "EmptyInput", "the request has no body and no form field")


def base64_field(document, fields) -> bytes:
    """Decode the base64 content of the first of `fields` present in a JSON document."""
    if not isinstance(document, dict):
        raise ItemError(400, "InvalidJSON", f"expected a JSON object with a {fields[0]!r} field")
    for name in fields:
        if name in document:
            value = document[name]
            break
    else:
        raise ItemError(400, "MissingField", f"the JSON object has no {' or '.join(map(repr, fields))} field")
    if not isinstance(value, str):
        raise ItemError(400, "InvalidJSON", f"field {name!r} must be a base64 string, not {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ItemError(400, "InvalidBase64", f"field {name!r} is not valid base64: {error}") from None


def binary_content(payload, json_fields, max_bytes: int, what: str) -> bytes:
    """Bytes of a binary upload (image, audio) from a raw body, a form field or base64 in JSON."""
    if isinstance(payload, (dict, list)):
        content = base64_field(payload, json_fields)
    elif isinstance(payload, str):
        # A text/* body: TorchServe decoded it, so it was text and not a file. Accept base64 text.
        try:
            content = base64.b64decode(payload.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ItemError(400, "InvalidInput", f"the body is text, not {what} bytes or base64") from None
    else:
        content = bytes(payload)
    if not content:
        raise ItemError(400, "EmptyInput", f"the {what} is empty (0 bytes)")
    if len(content) > max_bytes:
        raise payload_too_large(f"the {what}", len(content), max_bytes)
    return content


def choose_device(gpu_id) -> torch.device:
    """cuda:{gpu_id} when TorchServe gave this worker a GPU, else CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        device = torch.device(f"cuda:{gpu_id}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def configure_threads(threads_per_worker: Optional[int], max_workers: int) -> int:
    """Give each worker its share of the cores instead of torch's default of all of them.

    With the default, N workers each start one thread per core and oversubscribe the machine
    (measured on a 16-core host: the stock image handler went from ~30 to ~367 req/s with one
    thread per worker). The default share is cores // maxWorkers, at least 1.
    """
    if not threads_per_worker:
        threads_per_worker = max(1, (os.cpu_count() or 1) // max(1, max_workers))
    torch.set_num_threads(threads_per_worker)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started in this process
        pass
    return threads_per_worker


def top_k_predictions(probabilities: torch.Tensor, labels: List[str], k: int) -> List[Dict[str, float]]:
    """One {label: probability} dict per row, highest first, as TorchServe's stock classifiers answer."""
    k = min(k, probabilities.shape[1])
    values, indices = torch.topk(probabilities, k, dim=1)
    return [
        {labels[i]: float(p) for p, i in zip(row_values, row_indices)}
        for row_values, row_indices in zip(values.tolist(), indices.tolist())
    ]


@dataclass
class PreparedBatch:
    size: int
    inputs: Any = None                      # what collate() built from the valid items
    valid_indices: List[int] = field(default_factory=list)
    errors: Dict[int, ItemError] = field(default_factory=dict)
    headers: Dict[int, Dict[str, str]] = field(default_factory=dict)
    probabilities: Optional[torch.Tensor] = None  # [len(valid_indices), num_labels], on CPU


class BatchClassifierHandler(BaseHandler):
    """preprocess → inference → postprocess over the whole batch, isolating bad items.

    Settings come from the `handler:` section of the archive's model-config (configs/<model>.yaml):
    top_k, max_bytes, precision (fp32|fp16|bf16), threads_per_worker, plus each modality's own.
    """

    modality = "input"
    default_max_bytes = 10 * 1024 * 1024

    def initialize(self, context):
        # BaseHandler.initialize expects a serialized module or a model file; our archives carry a
        # state_dict plus model.json, so the model is rebuilt from model_defs instead.
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        model_yaml = getattr(context, "model_yaml_config", None) or {}
        self.settings = dict(model_yaml.get("handler") or {})
        self.device = choose_device(properties.get("gpu_id"))
        self.map_location = self.device.type
        self.threads = configure_threads(self.settings.get("threads_per_worker"), int(model_yaml.get("maxWorkers", 1)))
        precision = self.settings.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"handler.precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.autocast_dtype = PRECISIONS[precision]
        self.top_k = int(self.settings.get("top_k", 5))
        self.max_bytes = int(self.settings.get("max_bytes", self.default_max_bytes))

        export = load_export(properties.get("model_dir"), self.device)
        self.model, self.spec, self.labels = export.model, export.spec, export.labels
        self.load_modality(export)
        self.initialized = True
        logger.info(
            "%s ready on %s: arch=%s labels=%d threads=%d precision=%s",
            context.model_name, self.device, self.spec["arch"], len(self.labels), self.threads, precision,
        )

    # ---- hooks for modality handlers -------------------------------------------------------
    def load_modality(self, export) -> None:
        """Load what the modality needs besides the model (a tokenizer, a feature extractor)."""

    def prepare_item(self, row: Dict[str, Any], index: int):
        """One request's row, as the worker hands it over → (model-ready item, response headers)."""
        return self.prepare_payload(extract_payload(row), index)

    def prepare_payload(self, payload, index: int):
        """One request's content → (model-ready item, response headers). Raise ItemError on bad input."""
        raise NotImplementedError

    def collate(self, items: list):
        return torch.stack(items)

    def batch_headers(self, inputs) -> List[Dict[str, str]]:
        """Response headers known only once the batch is collated (e.g. token counts), one dict per valid item."""
        return []

    def forward(self, inputs) -> torch.Tensor:
        return self.model(inputs.to(self.device, non_blocking=True))

    # ---- the template methods, on whole batches ----------------------------------------------
    def preprocess(self, data) -> PreparedBatch:
        batch = PreparedBatch(size=len(data))
        items = []
        for index, row in enumerate(data):
            try:
                item, headers = self.prepare_item(row, index)
            except ItemError as error:
                batch.errors[index] = error
                continue
            except Exception as error:  # a decoder failing in a way it does not document
                logger.warning("request %d of the batch was rejected", index, exc_info=True)
                batch.errors[index] = ItemError(400, "InvalidInput", f"the {self.modality} could not be processed: {error}")
                continue
            items.append(item)
            batch.valid_indices.append(index)
            batch.headers[index] = headers
        if items:
            batch.inputs = self.collate(items)
            for index, headers in zip(batch.valid_indices, self.batch_headers(batch.inputs)):
                batch.headers[index] = {**batch.headers[index], **headers}
        return batch

    def inference(self, batch: PreparedBatch, *args, **kwargs) -> PreparedBatch:
        if batch.inputs is None:
            return batch
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with torch.inference_mode(), autocast:
            logits = self.forward(batch.inputs)
        batch.probabilities = torch.softmax(logits.float(), dim=1).cpu()
        return batch

    def postprocess(self, batch: PreparedBatch) -> list:
        responses: List[Any] = [None] * batch.size
        if batch.probabilities is not None:
            for index, prediction in zip(batch.valid_indices, top_k_predictions(batch.probabilities, self.labels, self.top_k)):
                responses[index] = prediction
                for key, value in batch.headers.get(index, {}).items():
                    self.context.set_response_header(index, key, value)
        for index, error in batch.errors.items():
            self.context.set_response_status(error.status, http.HTTPStatus(error.status).phrase, index)
            self.context.set_response_content_type(index, "application/json")
            responses[index] = json.dumps(error.body())
        return responses
