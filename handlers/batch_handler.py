"""The base handler every modality's handler subclasses: BaseHandler's preprocess → inference →
postprocess, on whole batches, with every request answered on its own.

A modality handler sets `modality` (the export's model.json must say the same), `settings_class`
(HandlerSettings, or one extended with its own keys) and `json_fields` (the JSON keys that may carry
its content), and provides these hooks:

    load_modality(export)                 what it needs besides the model (a tokenizer, a feature extractor)
    item_from_content(content, index)     one request's content (bytes, str or parsed JSON) → (item, headers)
      or item_from_row(row, index)        ... from the worker's whole row, where fields and headers matter (text)
    collate(items)                        the batch's items → the model's input (default: torch.stack)
    batch_headers(inputs)                 response headers known once the batch is collated (token counts)
    forward(inputs)                       the model's logits (default: the model on the stacked tensor)
    attribution_input(batch, position)    what Captum attributes for one item (default: the collated row)
    explanation_fields(attributions, ...) the attributions laid out for a person (default: as they are)

TorchServe imports handler modules top-level from the archive root, so this module and its
neighbours (handler_settings, worker_threads, model_runtime, request_payloads, item_errors,
out_of_memory, protocols, explanations, latency_histogram) are shipped flat beside them (archive.sh). TorchServe's loader also requires a handler
module to define exactly one class: keep helper classes out of handler modules (here, or in model_defs).
"""
import http
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from ts.handler_utils.timer import timed
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

import protocols
from explanations import (EXPLANATIONS_REFUSED_COUNTER, AttributionInput, ExplanationOptions, ExplanationSettings,
                          explain_requests, round_floats)
from handler_settings import PRECISIONS, CoreSettings
from item_errors import ItemError, PreparedBatch, internal_error, merge_headers
from latency_histogram import LatencyHistograms, torchserve_counter_emitter
from out_of_memory import OUT_OF_MEMORY_COUNTER, out_of_memory_error, probabilities_halving_on_out_of_memory
from model_runtime import load_model
from request_payloads import extract_payload
from worker_threads import WorkerThreads

logger = logging.getLogger(__name__)


# The handler's counters (per model: ModelName, Level): batches run, forward passes that ran out of
# memory (each split in halves counts), explanation requests refused past the batch's time budget.
COUNTERS = ("ts_handler_batches", OUT_OF_MEMORY_COUNTER, EXPLANATIONS_REFUSED_COUNTER)


@dataclass(frozen=True)
class HandlerSettings(CoreSettings, ExplanationSettings):
    """The whole `handler:` section: the keys every model has, and the explanations' keys."""


def top_k_predictions(probabilities: torch.Tensor, labels: List[str], k: int) -> List[Dict[str, float]]:
    """One {label: probability} dict per row, highest first, as TorchServe's stock classifiers answer."""
    k = min(k, probabilities.shape[1])
    values, indices = torch.topk(probabilities, k, dim=1)
    return [
        {labels[i]: float(p) for p, i in zip(row_values, row_indices)}
        for row_values, row_indices in zip(values.tolist(), indices.tolist())
    ]


class BatchClassifierHandler(BaseHandler):
    """preprocess → inference → postprocess over the whole batch, isolating bad items."""

    modality = "input"
    settings_class = HandlerSettings
    json_fields = ("data",)
    # Why /explanations cannot be served by this worker (e.g. a runtime Captum cannot differentiate),
    # as the 400 answer's message; None when it can.
    explanations_unavailable: Optional[str] = None
    # True where item_from_content's decoding releases the GIL (PIL's JPEG decoder, resampling in torch):
    # a batch's requests are then decoded on the worker's torch threads at once, not one after another.
    # On a 12-megapixel photo decoding costs more than the model (docs/benchmark.md), so a worker
    # with two threads serves about twice the photos; where decoding is cheap, threads only add overhead.
    decode_in_threads = False

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

        loaded = load_model(context.model_name, properties.get("model_dir"), self.manifest, properties.get("gpu_id"),
                            self.modality, self.settings.precision, threads=lambda: self.worker_threads.threads)
        self.device, self.explanations_unavailable = loaded.device, loaded.explanations_unavailable
        export = loaded.export
        self.model, self.spec, self.labels = export.model, export.spec, export.labels
        self.load_modality(export)
        self.latency_histograms = (LatencyHistograms(context.model_name, torchserve_counter_emitter())
                                   if self.settings.latency_histograms else None)
        self.announce_counters()
        self.initialized = True
        logger.info(
            "%s ready on %s: arch=%s runtime=%s labels=%d threads=%d precision=%s", context.model_name, self.device,
            self.spec["arch"], self.spec.get("runtime", "torch"), len(self.labels), self.threads, self.settings.precision,
        )

    @property
    def threads(self) -> int:
        return self.worker_threads.threads

    # ---- metrics ------------------------------------------------------------------------------
    def metric_dimensions(self, **extra: str) -> List[Dimension]:
        """The model's dimensions, given explicitly: TorchServe adds ModelName only when a batch's request
        ids are set (not at initialize), and appends its defaults to a list shared between calls."""
        return [Dimension("ModelName", self.context.model_name), Dimension("Level", "Model"),
                *(Dimension(name, value) for name, value in extra.items())]

    def report_thread_share(self, threads: int, workers: int) -> None:
        """This worker's torch threads and the live workers it shares the cores with, as gauges per
        worker pid on the metrics endpoint: what the live tests and the benchmark read back."""
        for name, value in (("ts_handler_torch_threads", threads), ("ts_handler_live_workers", workers)):
            self.context.metrics.add_metric(name, value, "count", None,
                                            self.metric_dimensions(WorkerPid=str(os.getpid())),
                                            MetricTypes.GAUGE)

    def announce_counters(self) -> None:
        """Every counter the handler keeps, sent at zero when the worker starts. A series appears on
        /metrics with its first value, and rate() and increase() cannot see the increment that created
        it: a model's first out-of-memory split would never alert. Sent again by a restarted worker,
        zero adds nothing."""
        for name in COUNTERS:
            self.context.metrics.add_counter(name, 0, None, self.metric_dimensions())
        if self.latency_histograms is not None:
            self.latency_histograms.announce()

    # ---- hooks for modality handlers -------------------------------------------------------
    def load_modality(self, export) -> None:
        """Load what the modality needs besides the model (a tokenizer, a feature extractor)."""

    def item_from_row(self, row: Dict[str, Any], index: int):
        """One instance's row, as the worker hands it over → (model-ready item, response headers)."""
        return self.item_from_content(extract_payload(row), index)

    def item_from_content(self, content, index: int):
        """One instance's content → (model-ready item, response headers). Raise ItemError on bad input."""
        raise NotImplementedError(f"{type(self).__name__} must provide item_from_content or item_from_row")

    def collate(self, items: list):
        return torch.stack(items)

    def batch_headers(self, inputs) -> List[Dict[str, str]]:
        """Response headers known only once the batch is collated (e.g. token counts), one dict per valid item."""
        return []

    def forward(self, inputs) -> torch.Tensor:
        return self.model(inputs.to(self.device, non_blocking=True))

    def attribution_input(self, batch: PreparedBatch, position: int) -> AttributionInput:
        """What Captum attributes for the valid item at `position` of the collated batch. The default
        suits a model that takes the collated tensor itself: that tensor, with zeros as its baseline."""
        inputs = batch.inputs[position:position + 1].to(self.device)
        return AttributionInput(inputs, torch.zeros_like(inputs), self.model)

    def explanation_fields(self, attributions: torch.Tensor, source: AttributionInput, batch: PreparedBatch,
                           position: int, options: ExplanationOptions) -> Dict[str, Any]:
        """The modality's part of an explanation: its attributions laid out for a person (a grid over
        the image, one value per token, per frame and mel band), and a PNG when options.visualize.
        The default, for a modality that lays out nothing of its own: the attributions as they are,
        shaped like one item of the model's input (one value per feature of a tabular row)."""
        return {"attributions": round_floats(attributions[0]), "shape": list(attributions.shape[1:])}

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
        forwarded, forward_started = len(set(batch.valid_indices)), time.perf_counter()
        try:
            batch = self.inference(batch)
        except Exception:
            logger.exception("the forward pass failed for a batch of %d", len(batch.valid_indices))
            batch.fail_valid_items(internal_error())
        forward_seconds = time.perf_counter() - forward_started
        try:
            batch = self.postprocess(batch)
        except Exception:
            logger.exception("postprocessing failed for a batch of %d", batch.size)
            batch.fail_valid_items(internal_error())
        explained = [index for index in batch.indices_with_items() if index not in batch.errors and self.is_explanation(index)]
        if explained:
            self.explain_batch(batch, explained)
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms")
        # HandlerTime is a gauge on the metrics endpoint (its last value): this counter is what tells
        # how many batches the model ran, and so the batch size formed (requests / batches).
        context.metrics.add_counter("ts_handler_batches", 1, None, self.metric_dimensions())
        responses = self.respond(batch)
        if self.latency_histograms is not None:
            self.latency_histograms.observe(time.perf_counter() - started, len(data),
                                            forward_seconds if forwarded else None, forwarded)
        return responses

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
        item_headers = []
        for index, decoded in enumerate(self.decode_requests(data, batch)):
            if isinstance(decoded, ItemError):
                batch.errors[index] = decoded
                continue
            for item, headers in decoded:
                batch.items.append(item)
                item_headers.append(headers)
                batch.valid_indices.append(index)
        if batch.items:
            try:
                batch.inputs = self.collate(batch.items)
                for position, headers in enumerate(self.batch_headers(batch.inputs)):
                    item_headers[position] = {**item_headers[position], **headers}
            except Exception:
                logger.exception("collating a batch of %d failed", len(batch.items))
                batch.fail_valid_items(internal_error())
            for index in batch.indices_with_items():
                batch.headers[index] = merge_headers([item_headers[p] for p in batch.positions(index)])
        return batch

    def decode_requests(self, data, batch: PreparedBatch) -> list:
        """Each request's (item, headers) pairs, or its ItemError, in request order; on the worker's
        threads at once where the modality's decoding releases the GIL (`decode_in_threads`)."""
        def decode(index: int):
            try:
                return self.items_of_request(data[index], index, batch)
            except ItemError as error:
                return error
            except Exception:  # a bug, not bad input: decoders raise ItemError for what the client sent
                logger.exception("decoding request %d of the batch failed", index)
                return internal_error()

        threads = min(self.threads, len(data)) if self.decode_in_threads else 1
        if threads <= 1:
            return [decode(index) for index in range(len(data))]
        pool, size = getattr(self, "_decode_pool", (None, 0))
        if size != self.threads:  # the worker's share changed with the live workers: follow it
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
            self._decode_pool = (pool, self.threads)
        return list(pool.map(decode, range(len(data))))

    def items_of_request(self, row: Dict[str, Any], index: int, batch: PreparedBatch) -> list:
        """One request → its (item, headers) pairs, one per instance its protocol carries (all or none:
        a bad instance fails its whole request)."""
        try:
            request = protocols.unwrap(row)
        except protocols.ProtocolError as error:
            batch.requests[index] = error.request  # answered in its protocol's error form
            raise ItemError(400, "InvalidProtocolRequest", str(error)) from None
        batch.requests[index] = request
        items = []
        for number, instance_row in enumerate(request.rows):
            try:
                items.append(self.item_from_row(instance_row, index))
            except ItemError as error:
                raise ItemError(error.status, error.error_type,
                                request.instance_error_message(number, error.message)) from None
        return items

    @timed
    def inference(self, batch: PreparedBatch, *args, **kwargs) -> PreparedBatch:
        if batch.inputs is None:
            return batch
        batch.probabilities, exhausted = probabilities_halving_on_out_of_memory(self, batch.inputs, batch.items)
        for position in exhausted:
            batch.errors[batch.valid_indices[position]] = out_of_memory_error(self.device)
        return batch

    def probabilities(self, inputs) -> torch.Tensor:
        """Softmax of one forward pass over collated `inputs`, on CPU."""
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with torch.inference_mode(), autocast:
            logits = self.forward(inputs)
        return torch.softmax(logits.float(), dim=1).cpu()

    @timed
    def postprocess(self, batch: PreparedBatch) -> PreparedBatch:
        if batch.probabilities is not None:
            predictions = top_k_predictions(batch.probabilities, self.labels, self.settings.top_k)
            for index, prediction in zip(batch.valid_indices, predictions):
                batch.answers.setdefault(index, []).append(prediction)
        return batch

    @timed
    def explain_batch(self, batch: PreparedBatch, indices: List[int]) -> None:
        """Requests `indices` get explanations in place of predictions (explanations.explain_requests)."""
        explain_requests(self, batch, indices)

    def respond(self, batch: PreparedBatch) -> list:
        """One response per request, in the request's own protocol: its answer with its headers, or
        its error as JSON."""
        responses: List[Any] = [None] * batch.size
        request_ids = getattr(self.context, "request_ids", None) or {}
        for index, results in batch.answers.items():
            if index in batch.errors:
                continue
            responses[index] = protocols.render(batch.requests[index], results, self.context.model_name,
                                                request_ids.get(index, ""), explanations=self.is_explanation(index))
            for key, value in batch.headers.get(index, {}).items():
                self.context.set_response_header(index, key, value)
        for index, error in batch.errors.items():
            self.context.set_response_status(error.status, http.HTTPStatus(error.status).phrase, index)
            self.context.set_response_content_type(index, "application/json")
            responses[index] = json.dumps(protocols.render_error(batch.requests.get(index), error.body()))
        return responses
