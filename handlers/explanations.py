"""Captum attributions for one request at a time, for every modality.

TorchServe routes `POST /explanations/<model>` to the same worker and batch as predictions, marking
each such request with an `explain: True` header. BatchClassifierHandler reads that header per
request (TorchServe's stock handlers read request 0 for the whole batch), so a batch can mix the two
routes. Each explanation request is attributed on its own: it has its own target, method and options.

A modality says what is attributed through `AttributionInput`: the tensor (pixels, token embeddings,
log-mel features), the baseline that stands for "no evidence" (a mean-grey image, zero embeddings,
the log-mel of silence) and the forward function from that tensor to logits. This module knows
nothing of images, text or audio, so a modality added later through the handler's hooks gets
explanations too. Shipped flat in every archive beside handler_common; captum itself is imported
only when the first explanation is asked for, so predictions never pay for it.
"""
import base64
import io
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

METHODS = ("integrated_gradients", "gradient_shap")
# The options a request may set; cost (steps, samples) is the model-config's alone, so a request
# cannot buy itself more compute than the model's responseTimeout was sized for.
REQUEST_OPTIONS = ("target", "method", "noise_tunnel", "visualize")
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


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
