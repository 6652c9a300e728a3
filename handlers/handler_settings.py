"""The model-config's `handler:` section (configs/<model>.yaml): its schema and its checks.

Every key is declared with `setting(default, minimum=, choices=)` on a frozen dataclass, read once
when the worker starts: an unknown key, a wrong type or a value out of range stops the worker with
a message naming it, instead of being ignored. The keys every model has are `CoreSettings`; a
feature declares its own keys on a class of its own (explanations.ExplanationSettings), the base
handler combines them into `HandlerSettings`, and a modality adds its keys with `extend`
(e.g. max_pixels for images).
"""
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Dict, Optional

import torch

# The autocast dtype of the forward pass for each `precision` choice (None: no autocast).
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def setting(default, *, minimum=None, choices=None):
    """A handler setting with its default and range; the settings class checks every one when it is built."""
    return field(default=default, metadata={"minimum": minimum, "choices": choices})


@dataclass(frozen=True)
class SettingsSchema:
    """The checks shared by every settings class: known keys, types and ranges."""

    @classmethod
    def from_dict(cls, values: Optional[Dict[str, Any]]) -> "SettingsSchema":
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


@dataclass(frozen=True)
class CoreSettings(SettingsSchema):
    """The keys every model has, whatever its modality and features."""

    top_k: int = setting(3, minimum=1)                            # labels in each answer
    max_bytes: int = setting(10 * 1024 * 1024, minimum=1)         # largest request content (413 above)
    precision: str = setting("fp32", choices=tuple(PRECISIONS))   # autocast dtype for the forward pass
    threads_per_worker: Optional[int] = setting(None, minimum=1)  # default: cores // live workers
    profile: bool = setting(False)                                # ts_handler_{pre,post}process/inference metrics
    latency_histograms: bool = setting(True)                      # ts_handler_{request,forward}_seconds (latency_histogram.py)


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
