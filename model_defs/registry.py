"""Builds a model from its architecture name and constructor arguments.

An export's model.json records (arch, model_args); `build_model(arch, **model_args)` rebuilds the
same nn.Module at serving time, so the weights file can stay a plain state_dict.
"""
from typing import Callable, Dict, List

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


def available_architectures() -> List[str]:
    _import_modality_modules()
    return sorted(_BUILDERS)


def build_model(arch: str, **model_args) -> nn.Module:
    _import_modality_modules()
    if arch not in _BUILDERS:
        raise ValueError(
            f"unknown model architecture {arch!r}; valid choices: {', '.join(sorted(_BUILDERS))}"
        )
    return _BUILDERS[arch](**model_args)


def _import_modality_modules() -> None:
    # Registration happens on import; importing here means callers need only this module.
    # A modality whose optional dependency is missing (e.g. tokenizers) simply registers nothing.
    import importlib

    for module in ("image", "text", "audio"):
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith(__package__):
                continue
            raise
