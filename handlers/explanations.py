"""Captum attributions for one request at a time, for every modality.

TorchServe routes `POST /explanations/<model>` to the same worker and batch as predictions, marking
each such request with an `explain: True` header. BatchClassifierHandler reads that header per
request (TorchServe's stock handlers read request 0 for the whole batch), so a batch can mix the two
routes. Each explanation request is attributed on its own: it has its own target, method and options.

This module owns the whole feature: its settings (`ExplanationSettings`, the model-config's
`explain_*` keys), each request's options, the per-batch time budget (`explain_requests`, the one
entry point the base handler calls), Captum, and the helpers the modalities render PNGs with.

A modality says what is attributed through two handler hooks. `attribution_input` gives an
`AttributionInput`: the tensor (pixels, token embeddings, log-mel features), the baseline that stands
for "no evidence" (a mean-grey image, zero embeddings, the log-mel of silence) and the forward
function from that tensor to logits. `explanation_fields` lays the attributions out for a person (a
grid over the image, one value per token). This module knows nothing of images, text or audio, so a
modality added later through those hooks gets explanations too. Shipped flat in every archive beside
the base handler; captum itself is imported only when the first explanation is asked for, so
predictions never pay for it.
"""
import base64
import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from handler_settings import SettingsSchema, setting
from item_errors import ItemError, PreparedBatch, internal_error
from out_of_memory import is_out_of_memory, out_of_memory_error

logger = logging.getLogger(__name__)

METHODS = ("integrated_gradients", "gradient_shap")
# The options a request may set; cost (steps, samples) is the model-config's alone, so a request
# cannot buy itself more compute than the model's responseTimeout was sized for.
REQUEST_OPTIONS = ("target", "method", "noise_tunnel", "visualize")
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
BUDGET_SPENT = "ExplanationBudgetSpent"
# Explanation requests answered 503 BUDGET_SPENT, per model: how often clients must retry, and so
# whether explain_budget_seconds (or the explanations' cost) suits the traffic.
EXPLANATIONS_REFUSED_COUNTER = "ts_handler_explanations_refused"


@dataclass(frozen=True)
class ExplanationSettings(SettingsSchema):
    """The model-config's `explain_*` keys. A request may choose method and noise_tunnel, never the cost."""

    explain_method: str = setting("integrated_gradients", choices=METHODS)
    explain_noise_tunnel: bool = setting(False)                   # SmoothGrad around the method
    explain_steps: int = setting(50, minimum=2)                   # Integrated Gradients' path steps
    explain_samples: int = setting(16, minimum=2)                 # GradientShap baselines / SmoothGrad copies
    explain_internal_batch_size: int = setting(16, minimum=1)     # forwards evaluated together
    explain_noise_level: float = setting(0.1, minimum=1e-6)       # SmoothGrad noise, share of the input's range
    # Seconds one batch may spend on explanations; requests past it get a 503 to retry, so that the
    # predictions batched with them are answered well within responseTimeout.
    explain_budget_seconds: float = setting(10.0, minimum=0.1)


class OptionError(ValueError):
    """A request's explanation options are unusable; the message names the option and the valid values."""


@dataclass(frozen=True)
class ExplanationOptions:
    target: Optional[Union[str, int]]  # a label, an index, or None for the predicted class
    method: str
    noise_tunnel: bool                 # SmoothGrad: average attributions over noisy copies of the input
    visualize: bool                    # add a PNG rendering (base64) to the answer


@dataclass
class AttributionInput:
    inputs: torch.Tensor                           # [1, ...], on the model's device
    baseline: torch.Tensor                         # same shape: the input with no evidence in it
    forward: Callable[[torch.Tensor], torch.Tensor]  # [n, ...] → logits [n, classes]


def _as_text(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise OptionError("explanation options must be UTF-8 text") from None
    return value if isinstance(value, str) else None


def _flag(name: str, value, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = (_as_text(value) or "").lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise OptionError(f"{name} must be true or false, got {value!r}")


def option_header(option: str) -> str:
    """The request header that carries an option: target → x-explain-target."""
    return "x-explain-" + option.replace("_", "-")


def request_options(row: Dict[str, Any], headers: Dict[str, Any], default_method: str,
                    default_noise_tunnel: bool) -> ExplanationOptions:
    """The options of one explanation request, from its headers (`-H 'X-Explain-Target: star'`, for a
    raw body), its form fields (`-F target=star`) or its JSON object (`{"data": ..., "target": "star"}`).
    Not from the query string: TorchServe 0.12 drops it on /predictions and /explanations."""
    found: Dict[str, Any] = {}
    by_name = {str(name).lower(): value for name, value in (headers or {}).items() if isinstance(value, str)}
    found.update({key: by_name[option_header(key)] for key in REQUEST_OPTIONS if option_header(key) in by_name})
    body = row.get("body")
    if isinstance(body, dict):
        found.update({key: body[key] for key in REQUEST_OPTIONS if key in body})
    found.update({key: row[key] for key in REQUEST_OPTIONS if row.get(key) is not None})
    target = found.get("target")
    if isinstance(target, bool) or not (target is None or isinstance(target, (int, str, bytes, bytearray))):
        raise OptionError(f"target must be a label or a class index, got {target!r}")
    if not isinstance(target, int):
        target = _as_text(target) or None
    method = _as_text(found.get("method")) or default_method
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; valid choices: {', '.join(METHODS)}")
    return ExplanationOptions(target=target, method=method,
                              noise_tunnel=_flag("noise_tunnel", found.get("noise_tunnel"), default_noise_tunnel),
                              visualize=_flag("visualize", found.get("visualize"), False))


def target_index(target: Optional[Union[str, int]], labels: Sequence[str], predicted: int) -> int:
    """The class to explain: the predicted one, or the request's, given as a label or an index."""
    if target is None:
        return predicted
    if isinstance(target, str) and target in labels:
        return labels.index(target)
    if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
        index = int(target)
        if 0 <= index < len(labels):
            return index
        raise OptionError(f"target index {index} is out of range: the model has {len(labels)} classes (0-{len(labels) - 1})")
    shown = ", ".join(labels[:50]) + (f" ... ({len(labels)} in all)" if len(labels) > 50 else "")
    raise OptionError(f"unknown target {target!r}; valid labels: {shown}")


@dataclass(frozen=True)
class AttributionCost:
    steps: int                 # Integrated Gradients' path steps
    samples: int               # GradientShap's baseline samples, and SmoothGrad's noisy copies
    internal_batch_size: int   # forwards evaluated together: bounds the memory of one explanation
    noise_level: float         # SmoothGrad's noise, as a share of the input's value range

    @classmethod
    def from_settings(cls, settings: ExplanationSettings) -> "AttributionCost":
        return cls(settings.explain_steps, settings.explain_samples, settings.explain_internal_batch_size,
                   settings.explain_noise_level)


# ---- the requests of a batch ------------------------------------------------------------------
def explain_requests(handler, batch: PreparedBatch, indices: List[int]) -> None:
    """Replace the predictions of requests `indices` by their explanations, one item at a time (each
    has its own target and options), within the batch's time budget (`explain_budget_seconds`).

    `handler` is the batch's BatchClassifierHandler: its settings, labels, request headers,
    `explanations_unavailable`, and the modality's hooks `attribution_input` and `explanation_fields`.
    A request's failure is its own: an ItemError, a 400 for bad options, a 507 for out of memory.
    """
    started, budget, explained = time.perf_counter(), handler.settings.explain_budget_seconds, 0
    for index in indices:
        try:
            explanations = []
            for position, row in zip(batch.positions(index), batch.requests[index].rows):
                spent = time.perf_counter() - started
                # Stop before an explanation that would likely overrun: the mean so far is the estimate.
                if explained and spent + spent / explained > budget:
                    raise over_budget_error(budget)
                explanations.append(explain_item(handler, batch, index, position, row))
                explained += 1
            batch.answers[index] = explanations
        except ItemError as error:
            batch.errors[index] = error
        except OptionError as error:
            batch.errors[index] = ItemError(400, "InvalidExplanationOptions", str(error))
        except Exception as error:
            logger.exception("explaining request %d of the batch failed", index)
            # Attribution runs many forward passes at once (explain_internal_batch_size): the likeliest
            # place to run out of memory, and the client's to retry or ask a cheaper method for.
            batch.errors[index] = out_of_memory_error(handler.device) if is_out_of_memory(error) else internal_error()
    refused = sum(1 for index in indices if getattr(batch.errors.get(index), "error_type", None) == BUDGET_SPENT)
    if refused:  # one metric line per batch that refused any
        handler.context.metrics.add_counter(EXPLANATIONS_REFUSED_COUNTER, refused, None, handler.metric_dimensions())


def explain_item(handler, batch: PreparedBatch, index: int, position: int, row: Dict[str, Any]) -> Dict[str, Any]:
    """The explanation of the item at `position` of the batch, with request `index`'s options (from
    its headers and from `row`, the instance's own row)."""
    if handler.explanations_unavailable:
        raise ItemError(400, "ExplanationsUnavailable", handler.explanations_unavailable)
    settings = handler.settings
    options = request_options(row, handler.request_headers(index), settings.explain_method, settings.explain_noise_tunnel)
    probabilities = batch.probabilities[position]
    target = target_index(options.target, handler.labels, int(probabilities.argmax()))
    source = handler.attribution_input(batch, position)
    attributions, delta = attribute(source, target, options.method, options.noise_tunnel,
                                    AttributionCost.from_settings(settings))
    return {
        "target": handler.labels[target],
        "target_index": target,
        "probability": round(float(probabilities[target]), 6),
        "method": options.method,
        "noise_tunnel": options.noise_tunnel,
        "convergence_delta": None if delta is None else round(delta, 6),
        **handler.explanation_fields(attributions, source, batch, position, options),
    }


def over_budget_error(budget_seconds: float) -> ItemError:
    return ItemError(503, BUDGET_SPENT,
                     f"this batch spent its {budget_seconds:g} s explanation budget before reaching this request; retry it")


# ---- Captum -----------------------------------------------------------------------------------


def attribute(source: AttributionInput, target: int, method: str, noise_tunnel: bool,
              cost: AttributionCost) -> Tuple[torch.Tensor, Optional[float]]:
    """Attributions for `target`, shaped like `source.inputs`, and the convergence delta: how far the
    attributions' sum is from f(input) - f(baseline), the completeness the method promises."""
    from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel

    inputs = source.inputs.detach().float()
    baseline = source.baseline.detach().float().to(inputs.device)
    common = {"target": target, "return_convergence_delta": True}
    if method == "integrated_gradients":
        explainer = IntegratedGradients(source.forward)
        options = {**common, "baselines": baseline, "n_steps": cost.steps, "internal_batch_size": cost.internal_batch_size}
    elif method == "gradient_shap":
        explainer = GradientShap(source.forward)
        # The baseline distribution: the modality's baseline, and noisy copies of it.
        spread = _value_range(inputs) * 0.1
        baselines = torch.cat([baseline, baseline + spread * torch.randn((cost.samples - 1, *baseline.shape[1:]),
                                                                          device=inputs.device)])
        options = {**common, "baselines": baselines, "n_samples": cost.samples}
    else:
        raise OptionError(f"unknown method {method!r}; valid choices: {', '.join(METHODS)}")
    if noise_tunnel:
        options.update(nt_type="smoothgrad", nt_samples=cost.samples, nt_samples_batch_size=cost.internal_batch_size,
                       stdevs=cost.noise_level * _value_range(inputs))
        # GradientShap draws its baselines from the distribution given; under NoiseTunnel it must be told.
        options.update(draw_baseline_from_distrib=method == "gradient_shap")
        explainer = NoiseTunnel(explainer)
        options.pop("internal_batch_size", None)  # NoiseTunnel batches its noisy copies itself
    with torch.enable_grad():
        attributions, delta = explainer.attribute(inputs, **options)
    return attributions.detach(), float(delta.abs().max()) if delta is not None else None


def _value_range(tensor: torch.Tensor) -> float:
    return max(float(tensor.max() - tensor.min()), 1e-6)


def round_floats(values: torch.Tensor, digits: int = 6) -> List:
    """A tensor as nested lists of rounded floats: the answer stays small and readable."""
    return torch.round(values.detach().double().cpu(), decimals=digits).tolist()


def png_base64(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def new_figure(width_inches: float, height_inches: float):
    """A matplotlib figure on the Agg canvas, never pyplot: no GUI backend, no global state shared
    between the requests of a worker."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_inches, height_inches))
