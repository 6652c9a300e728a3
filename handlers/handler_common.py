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
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Callable, Dict, List, Optional

import psutil  # a TorchServe dependency
import torch
from ts.handler_utils.timer import timed
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

import protocols
from explanations import (
    METHODS,
    AttributionCost,
    AttributionInput,
    ExplanationOptions,
    OptionError,
    attribute,
    request_options,
    target_index,
)
from model_defs.export import LoadedExport, load_export
from model_defs.onnx_runtime import is_onnx_model_file, load_onnx_export, serialized_file

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


def _is_torchserve_worker(process: psutil.Process) -> bool:
    try:
        return any("model_service_worker" in part for part in process.cmdline())
    except psutil.Error:  # exited while being looked at
        return False


def live_worker_count() -> int:
    """How many TorchServe workers, of every model, the frontend that started this one has now.

    Workers are the frontend's child processes running ts/model_service_worker.py. Every model's
    workers count: they all compete for the same cores. Outside TorchServe (tests, the benchmark's
    in-process run) this process is the only one, so the answer is 1.
    """
    try:
        this = psutil.Process()
        parent = this.parent()
        if parent is None or not _is_torchserve_worker(this):
            return 1
        return max(1, sum(1 for child in parent.children() if _is_torchserve_worker(child)))
    except psutil.Error:
        return 1


class WorkerThreads:
    """Gives this worker its share of the cores, and keeps it as TorchServe scales workers at run time.

    With torch's default (one thread per core in every worker), N workers oversubscribe the machine:
    measured on a 16-core host, the stock image handler went from ~30 to ~367 req/s with one thread
    per worker. The share is cores // live workers, at least 1, re-read before a batch at most every
    `recheck_seconds`: scaling through the management API (even past maxWorkers) then keeps the total
    within the cores. A fixed `threads_per_worker` in the model-config turns this off.
    """

    def __init__(self, fixed: Optional[int] = None, recheck_seconds: float = 2.0, cores: Optional[int] = None,
                 on_change: Optional[Callable[[int, int], None]] = None):
        self.fixed, self.recheck_seconds, self.on_change = fixed, recheck_seconds, on_change
        self.cores = cores or os.cpu_count() or 1
        self.threads, self.workers, self.checked_at = 0, 0, float("-inf")
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work already started in this process
            pass
        self.follow_live_workers(force=True)

    def follow_live_workers(self, force: bool = False) -> int:
        now = time.monotonic()
        if not force and (self.fixed or now - self.checked_at < self.recheck_seconds):
            return self.threads
        self.checked_at = now
        workers = live_worker_count()
        threads = self.fixed or max(1, self.cores // workers)
        if (threads, workers) != (self.threads, self.workers):
            torch.set_num_threads(threads)
            logger.info("worker pid %d: %d torch threads (%d live workers on %d cores%s)", os.getpid(), threads,
                        workers, self.cores, ", fixed by threads_per_worker" if self.fixed else "")
            self.threads, self.workers = threads, workers
            if self.on_change is not None:
                self.on_change(threads, workers)
        return threads


def top_k_predictions(probabilities: torch.Tensor, labels: List[str], k: int) -> List[Dict[str, float]]:
    """One {label: probability} dict per row, highest first, as TorchServe's stock classifiers answer."""
    k = min(k, probabilities.shape[1])
    values, indices = torch.topk(probabilities, k, dim=1)
    return [
        {labels[i]: float(p) for p, i in zip(row_values, row_indices)}
        for row_values, row_indices in zip(values.tolist(), indices.tolist())
    ]


# ---- settings ---------------------------------------------------------------------------------
def setting(default, *, minimum=None, choices=None):
    """A handler setting with its default and range; HandlerSettings checks every one when it is built."""
    return field(default=default, metadata={"minimum": minimum, "choices": choices})


@dataclass(frozen=True)
class HandlerSettings:
    """The model-config's `handler:` section (configs/<model>.yaml): every key, its default and its range.

    Read once, when the worker starts: an unknown key, a wrong type or a value out of range stops the
    worker with a message naming it, instead of being ignored. A modality adds its keys with
    `HandlerSettings.extend` (e.g. max_pixels for images).
    """

    top_k: int = setting(3, minimum=1)                            # labels in each answer
    max_bytes: int = setting(10 * 1024 * 1024, minimum=1)         # largest request content (413 above)
    precision: str = setting("fp32", choices=tuple(PRECISIONS))   # autocast dtype for the forward pass
    threads_per_worker: Optional[int] = setting(None, minimum=1)  # default: cores // live workers
    profile: bool = setting(False)                                # ts_handler_{pre,post}process/inference metrics
    # Explanations (/explanations/<model>); a request may choose method and noise_tunnel, never the cost.
    explain_method: str = setting("integrated_gradients", choices=METHODS)
    explain_noise_tunnel: bool = setting(False)                   # SmoothGrad around the method
    explain_steps: int = setting(50, minimum=2)                   # Integrated Gradients' path steps
    explain_samples: int = setting(16, minimum=2)                 # GradientShap baselines / SmoothGrad copies
    explain_internal_batch_size: int = setting(16, minimum=1)     # forwards evaluated together
    explain_noise_level: float = setting(0.1, minimum=1e-6)       # SmoothGrad noise, share of the input's range
    # Seconds one batch may spend on explanations; requests past it get a 503 to retry, so that the
    # predictions batched with them are answered well within responseTimeout.
    explain_budget_seconds: float = setting(10.0, minimum=0.1)

    @classmethod
    def from_dict(cls, values: Optional[Dict[str, Any]]) -> "HandlerSettings":
        values = dict(values or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"handler: unknown setting(s) {', '.join(map(repr, unknown))}; "
                             f"valid settings: {', '.join(known)}")
        return cls(**{name: _checked_setting(known[name], value) for name, value in values.items()})

    @classmethod
    def extend(cls, name: str, **defaults) -> type:
        """A subclass with more settings: `extend("ImageSettings", max_pixels=setting(40_000_000, minimum=1))`.

        Built with make_dataclass because TorchServe's loader refuses a handler module that defines a
        second class; a setting already here (max_bytes) may be given a new default.
        """
        specs = [(key, _setting_type(spec.default), spec) for key, spec in defaults.items()]
        return make_dataclass(name, specs, bases=(cls,), frozen=True)

    def __post_init__(self):
        for spec in fields(self):
            value, minimum, choices = getattr(self, spec.name), spec.metadata.get("minimum"), spec.metadata.get("choices")
            if value is None:
                continue
            if minimum is not None and value < minimum:
                raise ValueError(f"handler: {spec.name} must be at least {minimum}, got {value}")
            if choices is not None and value not in choices:
                raise ValueError(f"handler: {spec.name} {value!r} is not one of {', '.join(map(str, choices))}")


def _setting_type(default) -> type:
    return Optional[int] if default is None else type(default)


def _checked_setting(spec, value):
    """`value` as the setting's type: YAML's 30 is a valid float, but True is not an int, nor "3"."""
    expected = spec.type
    if expected == Optional[int]:
        if value is None:
            return None
        expected = int
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ValueError(f"handler: {spec.name} must be {'a number' if expected in (int, float) else expected.__name__}"
                         f"{' (a whole number)' if expected is int else ''}, got {value!r}")
    return value


# ---- the batch as it moves through the stages ---------------------------------------------------
@dataclass
class PreparedBatch:
    size: int                               # requests in the batch
    inputs: Any = None                      # what collate() built from the valid items
    items: Optional[list] = None            # the valid items themselves: inference re-collates halves on out-of-memory
    # The request index of each item (each row of inputs). A plain request is one item; a KServe
    # v1/v2 request owns one item per instance, so its index repeats.
    valid_indices: List[int] = field(default_factory=list)
    errors: Dict[int, ItemError] = field(default_factory=dict)
    headers: Dict[int, Dict[str, str]] = field(default_factory=dict)
    probabilities: Optional[torch.Tensor] = None  # [len(valid_indices), num_labels], on CPU
    answers: Dict[int, Any] = field(default_factory=dict)  # request index → its answer (a list for v1/v2)
    envelopes: Dict[int, protocols.ProtocolRequest] = field(default_factory=dict)  # the KServe v1/v2 requests

    def fail_valid_items(self, error: ItemError) -> None:
        """Every item that was still going to be answered gets `error` (its batch failed after collating)."""
        for index in self.valid_indices:
            self.errors[index] = error
        self.valid_indices, self.inputs, self.probabilities, self.answers = [], None, None, {}

    def requests(self) -> List[int]:
        """The requests that have items, in order, each once."""
        return list(dict.fromkeys(self.valid_indices))

    def positions(self, index: int) -> List[int]:
        """The rows of inputs that request `index` owns."""
        return [position for position, owner in enumerate(self.valid_indices) if owner == index]


def merge_headers(per_item: List[Dict[str, str]]) -> Dict[str, str]:
    """One request's headers from its items': a multi-instance request lists each item's value, in
    order, comma-separated, as HTTP joins repeated headers."""
    merged: Dict[str, List[str]] = {}
    for headers in per_item:
        for key, value in headers.items():
            merged.setdefault(key, []).append(value)
    return {key: ", ".join(values) for key, values in merged.items()}


def over_budget_error(budget_seconds: float) -> ItemError:
    return ItemError(503, "ExplanationBudgetSpent",
                     f"this batch spent its {budget_seconds:g} s explanation budget before reaching this request; retry it")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA allocator raises torch.OutOfMemoryError; its CPU allocator and ONNX Runtime raise
    RuntimeErrors that say so in words."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        words in message for words in ("out of memory", "can't allocate memory", "failed to allocate memory"))


def out_of_memory_error(device: torch.device) -> ItemError:
    # 507 Insufficient Storage, as TorchServe itself answers for a batch lost with its worker: the
    # server, not the request, ran short; the client may retry, or send a smaller input.
    return ItemError(507, "OutOfMemory", f"the model ran out of memory ({device.type}) on this request even "
                                         "alone in its batch; retry later, or send a smaller input")


def internal_error() -> ItemError:
    # Our own bug is not the client's fault: a 500 that says where to look, with no exception text or
    # traceback in the answer (they can name files, paths and internals); the worker log has them.
    return ItemError(500, "InternalServerError", "the model server failed while handling this request; "
                                                  "the worker log has the details")


class BatchClassifierHandler(BaseHandler):
    """preprocess → inference → postprocess over the whole batch, isolating bad items.

    A modality handler sets `modality` (the export's model.json must say the same), `settings_class`
    (HandlerSettings, or one extended with its own keys) and `json_fields` (the JSON keys that may
    carry its content), and overrides the hooks below.
    """

    modality = "input"
    settings_class = HandlerSettings
    json_fields = ("data",)
    # Why /explanations cannot be served by this worker (e.g. a runtime Captum cannot differentiate),
    # as the 400 answer's message; None when it can.
    explanations_unavailable: Optional[str] = None
    # True where prepare_item's decoding releases the GIL (PIL's JPEG decoder, resampling in torch):
    # a batch's requests are then decoded on the worker's torch threads at once, not one after another.
    # On a 12-megapixel photo decoding costs more than the model (README, "Benchmark"), so a worker
    # with two threads serves about twice the photos; where decoding is cheap, threads only add overhead.
    prepare_in_threads = False

    def initialize(self, context):
        # BaseHandler.initialize expects a serialized module or a model file; our archives carry a
        # state_dict plus model.json, so the model is rebuilt from model_defs instead.
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        model_yaml = getattr(context, "model_yaml_config", None) or {}
        self.settings = self.settings_class.from_dict(model_yaml.get("handler"))
        self.worker_threads = WorkerThreads(self.settings.threads_per_worker, on_change=self.report_thread_share)
        self.autocast_dtype = PRECISIONS[self.settings.precision]

        export = self.load_runtime(context.model_name, properties.get("model_dir"), properties.get("gpu_id"))
        self.map_location = self.device.type
        self.model, self.spec, self.labels = export.model, export.spec, export.labels
        self.load_modality(export)
        self.initialized = True
        logger.info(
            "%s ready on %s: arch=%s runtime=%s labels=%d threads=%d precision=%s", context.model_name, self.device,
            self.spec["arch"], self.spec.get("runtime", "torch"), len(self.labels), self.threads, self.settings.precision,
        )

    def load_runtime(self, model_name: str, model_dir: str, gpu_id) -> LoadedExport:
        """The model on the runtime the archive's serialized file names (sets self.device): weights.pt
        is rebuilt in torch, model.onnx runs on ONNX Runtime with this worker's thread share."""
        if not is_onnx_model_file(serialized_file(model_dir, self.manifest)):
            self.device = choose_device(gpu_id)
            return load_export(model_dir, self.device, modality=self.modality)
        if self.autocast_dtype is not None:
            raise ValueError(f"handler: precision {self.settings.precision} is for the torch runtime; {model_name} is "
                             "an ONNX graph and runs at the precision it was exported in: set precision: fp32")
        # torch stays on the CPU: ONNX Runtime takes host arrays (its CUDA provider copies them to its GPU).
        self.device = torch.device("cpu")
        export = load_onnx_export(model_dir, threads=lambda: self.worker_threads.threads, gpu_id=gpu_id,
                                  modality=self.modality, name=model_name)
        eager_name = re.sub(r"_(onnx|int8)$", "", model_name)
        self.explanations_unavailable = (
            f"{model_name} runs on ONNX Runtime, which Captum cannot take gradients through: explanations come from "
            f"the eager model, /explanations/{eager_name if eager_name != model_name else export.spec['source']['name']}")
        logger.info("%s: ONNX Runtime on %s", model_name, export.model.device)
        return export

    @property
    def threads(self) -> int:
        return self.worker_threads.threads

    def metric_dimensions(self, **extra: str) -> List[Dimension]:
        """The model's dimensions, given explicitly: TorchServe adds ModelName only when a batch's request
        ids are set (not at initialize), and appends its defaults to a list shared between calls."""
        return [Dimension("ModelName", self.context.model_name), Dimension("Level", "Model"),
                *(Dimension(name, value) for name, value in extra.items())]

    def report_thread_share(self, threads: int, workers: int) -> None:
        """This worker's torch threads and the live workers it shares the cores with, as gauges per
        worker pid on the metrics endpoint: what the live tests and the benchmark read back."""
        for name, value in (("ts_handler_torch_threads", threads), ("ts_handler_live_workers", workers)):
            self.context.metrics.add_metric(name, value, "count", None, self.metric_dimensions(WorkerPid=str(os.getpid())),
                                            MetricTypes.GAUGE)

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

    def attribution_input(self, batch: "PreparedBatch", position: int) -> AttributionInput:
        """What Captum attributes for the valid item at `position` of the collated batch. The default
        suits a model that takes the collated tensor itself: that tensor, with zeros as its baseline."""
        inputs = batch.inputs[position:position + 1].to(self.device)
        return AttributionInput(inputs, torch.zeros_like(inputs), self.model)

    def explanation_fields(self, attributions: torch.Tensor, source: AttributionInput, batch: "PreparedBatch",
                           position: int, options: ExplanationOptions) -> Dict[str, Any]:
        """The modality's part of an explanation: its attributions laid out for a person (a grid over
        the image, one value per token, per frame and mel band), and a PNG when options.visualize."""
        raise NotImplementedError(f"{type(self).__name__} does not lay out explanations")

    # ---- the template methods, on whole batches ----------------------------------------------
    def handle(self, data, context):
        """BaseHandler.handle's flow, made to answer every request on its own: a bad item gets its 4xx,
        an explanation request (its own `explain` header, not request 0's) gets its explanation while
        its batch neighbours get predictions, and a failure in our own code answers 500 for the items
        it hit instead of raising (which TorchServe turns into a 503 for the whole batch)."""
        started = time.perf_counter()
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        self.worker_threads.follow_live_workers()
        batch = self.preprocess(data)
        try:
            batch = self.inference(batch)
        except Exception:
            logger.exception("the forward pass failed for a batch of %d", len(batch.valid_indices))
            batch.fail_valid_items(internal_error())
        try:
            batch = self.postprocess(batch)
        except Exception:
            logger.exception("postprocessing failed for a batch of %d", batch.size)
            batch.fail_valid_items(internal_error())
        explained = [index for index in batch.requests() if index not in batch.errors and self.is_explanation(index)]
        if explained:
            self.explain_batch(batch, data, explained)
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms")
        # HandlerTime is a gauge on the metrics endpoint (its last value): this counter is what tells
        # how many batches the model ran, and so the batch size formed (requests / batches).
        context.metrics.add_counter("ts_handler_batches", 1, None, self.metric_dimensions())
        return self.respond(batch)

    def request_headers(self, index: int) -> Dict[str, Any]:
        """Request `index`'s HTTP headers as the worker received them ({} where the context has none)."""
        try:
            return self.context.get_all_request_header(index) or {}
        except (AttributeError, IndexError, KeyError, TypeError):
            return {}

    def is_explanation(self, index: int) -> bool:
        """TorchServe's frontend marks each /explanations request with the header `explain: True`."""
        try:
            return self.context.get_request_header(index, "explain") == "True"
        except (AttributeError, IndexError, KeyError, TypeError):  # a context without request headers
            return False

    @timed
    def preprocess(self, data) -> PreparedBatch:
        batch = PreparedBatch(size=len(data))
        items, item_headers = [], []
        for index, prepared in enumerate(self.prepare_requests(data, batch)):
            if isinstance(prepared, ItemError):
                batch.errors[index] = prepared
                continue
            for item, headers in prepared:
                items.append(item)
                item_headers.append(headers)
                batch.valid_indices.append(index)
        if items:
            batch.items = items
            try:
                batch.inputs = self.collate(items)
                for position, headers in enumerate(self.batch_headers(batch.inputs)):
                    item_headers[position] = {**item_headers[position], **headers}
            except Exception:
                logger.exception("collating a batch of %d failed", len(items))
                batch.fail_valid_items(internal_error())
            for index in batch.requests():
                batch.headers[index] = merge_headers([item_headers[p] for p in batch.positions(index)])
        return batch

    def prepare_requests(self, data, batch: PreparedBatch) -> list:
        """Each request's (item, headers) pairs, or its ItemError, in request order; on the worker's
        threads at once where the modality's decoding releases the GIL (`prepare_in_threads`)."""
        def prepare(index: int):
            try:
                return self.prepare_request(data[index], index, batch)
            except ItemError as error:
                return error
            except Exception:  # a bug, not bad input: decoders raise ItemError for what the client sent
                logger.exception("preparing request %d of the batch failed", index)
                return internal_error()

        threads = min(self.threads, len(data)) if self.prepare_in_threads else 1
        if threads <= 1:
            return [prepare(index) for index in range(len(data))]
        pool, size = getattr(self, "_prepare_pool", (None, 0))
        if size != self.threads:  # the worker's share changed with the live workers: follow it
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(self.threads, thread_name_prefix="prepare")
            self._prepare_pool = (pool, self.threads)
        return list(pool.map(prepare, range(len(data))))

    def prepare_request(self, row: Dict[str, Any], index: int, batch: PreparedBatch) -> list:
        """One request → its (item, headers) pairs: one for a plain request, one per instance of a
        KServe v1/v2 request (all or none: a bad instance fails its whole request)."""
        try:
            envelope = protocols.parse(row)
        except protocols.ProtocolError as error:
            batch.envelopes[index] = protocols.ProtocolRequest(error.protocol, [])  # answered in its protocol's form
            raise ItemError(400, "InvalidProtocolRequest", str(error)) from None
        if envelope is None:
            return [self.prepare_item(row, index)]
        batch.envelopes[index] = envelope
        prepared = []
        for number, instance_row in enumerate(envelope.rows()):
            try:
                prepared.append(self.prepare_item(instance_row, index))
            except ItemError as error:
                raise ItemError(error.status, error.error_type, f"instance {number}: {error.message}") from None
        return prepared

    @timed
    def inference(self, batch: PreparedBatch, *args, **kwargs) -> PreparedBatch:
        if batch.inputs is None:
            return batch
        if batch.items is None:  # a subclass's own preprocess kept no items to split: one try
            batch.probabilities = self.probabilities(batch.inputs)
            return batch
        exhausted: List[int] = []  # positions that ran out of memory even alone
        batch.probabilities = self.probabilities_splitting_on_oom(batch.inputs, batch.items, 0, exhausted)
        for position in exhausted:
            batch.errors[batch.valid_indices[position]] = out_of_memory_error(self.device)
        return batch

    def probabilities(self, inputs) -> torch.Tensor:
        """Softmax of one forward pass over collated `inputs`, on CPU."""
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with torch.inference_mode(), autocast:
            logits = self.forward(inputs)
        return torch.softmax(logits.float(), dim=1).cpu()

    def probabilities_splitting_on_oom(self, inputs, items: list, offset: int, exhausted: List[int]) -> torch.Tensor:
        """probabilities(inputs); when the forward pass runs out of memory, the same for each half of
        `items`, recursively, down to single items: an item that runs out alone gets a NaN row and
        its position in `exhausted`. Splitting is sound because a classifier in eval mode treats the
        items of a batch independently (no batch statistics): a half yields the same rows. Any other
        exception propagates (handle answers the batch 500)."""
        try:
            return self.probabilities(inputs)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            logger.warning("out of memory (%s) on %d item(s)%s: %s", self.device, len(items),
                           "; retrying in halves" if len(items) > 1 else "", str(error).splitlines()[0][:300])
            self.context.metrics.add_counter("ts_handler_out_of_memory", 1, None)
        # Retried out of the except block: the exception's traceback holds the failed forward's frames
        # and tensors, and the device memory is freed only once they are gone.
        del inputs
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(items) == 1:
            exhausted.append(offset)
            return torch.full((1, len(self.labels)), float("nan"))
        half = len(items) // 2
        first, second = items[:half], items[half:]
        return torch.cat([self.probabilities_splitting_on_oom(self.collate(first), first, offset, exhausted),
                          self.probabilities_splitting_on_oom(self.collate(second), second, offset + half, exhausted)])

    @timed
    def postprocess(self, batch: PreparedBatch) -> PreparedBatch:
        if batch.probabilities is not None:
            predictions = top_k_predictions(batch.probabilities, self.labels, self.settings.top_k)
            for index, prediction in zip(batch.valid_indices, predictions):
                if index in batch.envelopes:
                    batch.answers.setdefault(index, []).append(prediction)
                else:
                    batch.answers[index] = prediction
        return batch

    @timed
    def explain_batch(self, batch: PreparedBatch, data: list, indices: List[int]) -> None:
        """Replace the predictions of requests `indices` by their explanations, one item at a time
        (each has its own target and options), within the batch's time budget."""
        started, budget, explained = time.perf_counter(), self.settings.explain_budget_seconds, 0
        for index in indices:
            envelope = batch.envelopes.get(index)
            option_rows = envelope.rows() if envelope else [data[index]]
            try:
                explanations = []
                for position, option_row in zip(batch.positions(index), option_rows):
                    spent = time.perf_counter() - started
                    # Stop before an explanation that would likely overrun: the mean so far is the estimate.
                    if explained and spent + spent / explained > budget:
                        raise over_budget_error(budget)
                    explanations.append(self.explain_item(batch, index, position, option_row))
                    explained += 1
                batch.answers[index] = explanations if envelope else explanations[0]
            except ItemError as error:
                batch.errors[index] = error
            except OptionError as error:
                batch.errors[index] = ItemError(400, "InvalidExplanationOptions", str(error))
            except Exception as error:
                logger.exception("explaining request %d of the batch failed", index)
                # Attribution runs many forward passes at once (explain_internal_batch_size): the likeliest
                # place to run out of memory, and the client's to retry or ask a cheaper method for.
                batch.errors[index] = out_of_memory_error(self.device) if is_out_of_memory(error) else internal_error()

    def explain_item(self, batch: PreparedBatch, index: int, position: int, row: Dict[str, Any]) -> Dict[str, Any]:
        """The explanation of the item at `position` of the batch, with request `index`'s options."""
        if self.explanations_unavailable:
            raise ItemError(400, "ExplanationsUnavailable", self.explanations_unavailable)
        options = request_options(row, self.request_headers(index), self.settings.explain_method,
                                  self.settings.explain_noise_tunnel)
        probabilities = batch.probabilities[position]
        target = target_index(options.target, self.labels, int(probabilities.argmax()))
        source = self.attribution_input(batch, position)
        cost = AttributionCost(self.settings.explain_steps, self.settings.explain_samples,
                               self.settings.explain_internal_batch_size, self.settings.explain_noise_level)
        attributions, delta = attribute(source, target, options.method, options.noise_tunnel, cost)
        return {
            "target": self.labels[target],
            "target_index": target,
            "probability": round(float(probabilities[target]), 6),
            "method": options.method,
            "noise_tunnel": options.noise_tunnel,
            "convergence_delta": None if delta is None else round(delta, 6),
            **self.explanation_fields(attributions, source, batch, position, options),
        }

    def respond(self, batch: PreparedBatch) -> list:
        """One response per request, in the request's own protocol: its answer with its headers, or
        its error as JSON."""
        responses: List[Any] = [None] * batch.size
        for index, answer in batch.answers.items():
            if index in batch.errors:
                continue
            envelope = batch.envelopes.get(index)
            if envelope is not None:
                request_id = (getattr(self.context, "request_ids", None) or {}).get(index, "")
                answer = protocols.answer(envelope, answer, self.context.model_name, request_id,
                                          explanations=self.is_explanation(index))
            responses[index] = answer
            for key, value in batch.headers.get(index, {}).items():
                self.context.set_response_header(index, key, value)
        for index, error in batch.errors.items():
            self.context.set_response_status(error.status, http.HTTPStatus(error.status).phrase, index)
            self.context.set_response_content_type(index, "application/json")
            body = protocols.error_body(error.status, error.error_type, error.message) if index in batch.envelopes \
                else error.body()
            responses[index] = json.dumps(body)
        return responses
