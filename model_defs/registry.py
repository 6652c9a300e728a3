"""Builds a model from its architecture name and constructor arguments.

An export's model.json records (modality, arch, model_args); `build_model(arch, modality, **model_args)`
rebuilds the same nn.Module at serving time, so the weights file can stay a plain state_dict.

Every architecture belongs to one modality (as timm's registry knows each model's module): an image
script or handler given a text architecture is refused with the image architectures to choose from,
instead of failing later on a batch of the wrong shape.
"""
import importlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

MODALITIES = ("image", "text", "audio")


@dataclass(frozen=True)
class _Registered:
    builder: Callable[..., nn.Module]
    modality: str


_REGISTRY: Dict[str, _Registered] = {}


def register(name: str, modality: Optional[str] = None):
    """Decorator: make a model builder (a class or a function returning an nn.Module) buildable by name.

    The modality defaults to the builder's module, `model_defs.<modality>`; a builder defined
    elsewhere names it.
    """

    def add(builder):
        owner = modality or builder.__module__.rpartition(".")[2]
        if owner not in MODALITIES:
            raise ValueError(f"model architecture {name!r} from module {builder.__module__} needs "
                             f"register(..., modality=...); valid choices: {', '.join(MODALITIES)}")
        if name in _REGISTRY:
            raise ValueError(f"model architecture {name!r} is registered twice")
        _REGISTRY[name] = _Registered(builder, owner)
        return builder

    return add


def available_architectures(modality: Optional[str] = None) -> List[str]:
    """The names `build_model` accepts: one modality's, or every modality's when none is named."""
    modalities = _load_modalities(modality)
    return sorted(name for name, registered in _REGISTRY.items() if registered.modality in modalities)


def check_architecture(arch: str, modality: Optional[str] = None) -> None:
    """ValueError naming the valid choices unless `arch` is registered (for `modality`, when named)."""
    choices = available_architectures(modality)
    if arch not in choices:
        kind = f"{modality} model" if modality else "model"
        raise ValueError(f"unknown {kind} architecture {arch!r}; valid choices: {', '.join(choices)}")


def build_model(arch: str, modality: Optional[str] = None, **model_args) -> nn.Module:
    """Build `arch` with `model_args`. Naming the modality imports only its module, so a server
    that hosts only image models needs none of the text or audio dependencies."""
    check_architecture(arch, modality)
    return _REGISTRY[arch].builder(**model_args)


def _load_modalities(modality: Optional[str]) -> Tuple[str, ...]:
    """The modality named (every one when None), its module imported."""
    # Registration happens on import; importing here means callers need only this module.
    modalities = MODALITIES if modality is None else (modality,)
    for name in modalities:
        if name not in MODALITIES:
            raise ValueError(f"unknown modality {name!r}; valid choices: {', '.join(MODALITIES)}")
        importlib.import_module(f"{__package__}.{name}")
    return modalities
