"""Builds a model from its architecture name and constructor arguments.

An export's model.json records (arch, model_args); `build_model(arch, **model_args)` rebuilds the
same nn.Module at serving time, so the weights file can stay a plain state_dict.
"""
import importlib
from typing import Callable, Dict, List, Optional

from torch import nn

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: make a model builder (a class or a function returning an nn.Module) buildable by name."""

    def add(builder):
        if name in _BUILDERS:
            raise ValueError(f"model architecture {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return add


MODALITIES = ("image", "text", "audio")


def available_architectures() -> List[str]:
    _import_modality_modules(MODALITIES)
    return sorted(_BUILDERS)


def build_model(arch: str, modality: Optional[str] = None, **model_args) -> nn.Module:
    """Build `arch` with `model_args`. Naming the modality imports only its module, so a server
    that hosts only image models needs none of the text or audio dependencies."""
    _import_modality_modules((modality,) if modality else MODALITIES)
    if arch not in _BUILDERS:
        raise ValueError(
            f"unknown model architecture {arch!r}; valid choices: {', '.join(sorted(_BUILDERS))}"
        )
    return _BUILDERS[arch](**model_args)


def _import_modality_modules(modalities) -> None:
    # Registration happens on import; importing here means callers need only this module.
    for modality in modalities:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; valid choices: {', '.join(MODALITIES)}")
        importlib.import_module(f"{__package__}.{modality}")
