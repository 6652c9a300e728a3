"""--init-weights SOURCE: training that starts from weights someone already has (fine-tuning).

SOURCE is one of
    an export          exports/<name>/ (a folder with model.json): its weights, and what they were made
                       with: architecture, constructor arguments, preprocessing, labels (a text export's
                       tokenizer too: the embeddings are rows of its vocabulary)
    a weights file     any form model_defs/checkpoints.py reads: a state_dict, a checkpoint dict, a
                       .safetensors file (a pickled module with --trust-pickle)
    a weights name     for images, torchvision's: IMAGENET1K_V1, DEFAULT, or ResNet50_Weights.IMAGENET1K_V2,
                       through torchvision's weights API, from torch.hub's cache (fetched into it when
                       not there and the network allows)

`apply_initial_weights` loads them into the freshly built model: every tensor but the classifier head
must fit (the error lists each difference); the head is replaced, and the script says so, when the
weights have another number of outputs than the data has classes, or other labels (known from an
export or torchvision's categories). `parameter_groups` then freezes the rest of the network or
gives it a lower learning rate (--freeze-backbone, --backbone-lr-scale).
"""
import argparse
import os
import re
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple
from urllib.parse import urlparse

import torch
from torch import nn

from model_defs.checkpoints import (CheckpointError, file_provenance, fit_state_dict, head_axes, load_fitted,
                                    read_model_file)
from model_defs.export import MODEL_JSON, WEIGHTS_FILE, read_labels, read_spec
from train.common import CommandError

# IMAGENET1K_V1, DEFAULT, or with its enum: ResNet50_Weights.IMAGENET1K_V2 (torchvision's spellings).
TORCHVISION_WEIGHTS_NAME = re.compile(r"^([A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*$")


@dataclass
class InitialWeights:
    """Weights to start from, with what is known of them."""

    state_dict: dict
    description: str                  # for the log: "export exports/shapes (resnet18, 6 labels)"
    provenance: dict                  # model.json's "initialized_from"
    labels: Optional[List[str]] = None
    spec: Optional[dict] = None       # an export's model.json
    directory: Optional[Path] = None  # an export's folder
    preprocess: dict = field(default_factory=dict)  # what the weights expect: torchvision's transforms


def add_init_arguments(parser: argparse.ArgumentParser, modality: str) -> argparse.ArgumentParser:
    names = " or a torchvision weights name (IMAGENET1K_V1, DEFAULT)" if modality == "image" else ""
    parser.add_argument("--init-weights", metavar="SOURCE",
                        help=f"start from these weights instead of random ones: an export folder, a weights file{names}; "
                             "the classifier head is replaced when the labels differ")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="with --init-weights: train the classifier head only")
    parser.add_argument("--backbone-lr-scale", type=float, default=1.0,
                        help="with --init-weights: the rest of the network learns at this times --lr (default 1)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="with --init-weights: load a file holding pickled objects (unpickling runs code the file "
                             "names: only for a file you trust)")
    return parser


def check_init_arguments(args) -> None:
    if args.init_weights is None and (args.freeze_backbone or args.backbone_lr_scale != 1.0):
        raise CommandError("--freeze-backbone and --backbone-lr-scale need --init-weights: a network trained from "
                           "random weights has no backbone worth keeping")
    if not args.backbone_lr_scale > 0:
        raise CommandError(f"--backbone-lr-scale must be above 0, got {args.backbone_lr_scale} (--freeze-backbone "
                           "keeps the backbone fixed)")


def initial_weights(args, modality: str, default_arch: str) -> Optional["InitialWeights"]:
    """A training script's --init-weights resolved (None without it), with args.arch settled: the one
    given, else the export's, else `default_arch`. An --arch other than the export's is refused."""
    check_init_arguments(args)
    if args.init_weights is None:
        args.arch = args.arch or default_arch
        return None
    initial = resolve(args.init_weights, modality=modality, arch=args.arch or default_arch,
                      trust_pickle=args.trust_pickle)
    from_export = initial.spec["arch"] if initial.spec else None
    if args.arch and from_export and args.arch != from_export:
        raise CommandError(f"--arch {args.arch}, but --init-weights {args.init_weights} is a {from_export} export")
    args.arch = args.arch or from_export or default_arch
    return initial


# ---- finding them ------------------------------------------------------------------------------------
def resolve(source: str, *, modality: str, arch: Optional[str], trust_pickle: bool = False) -> InitialWeights:
    """The weights SOURCE names, CommandError naming the problem. `arch` is needed for a torchvision name."""
    path = Path(source)
    if path.is_dir():
        return from_export(path, modality)
    if path.is_file():
        try:
            model_file = read_model_file(path, trust_pickle=trust_pickle)
        except CheckpointError as error:
            raise CommandError(f"--init-weights: {error}") from None
        if model_file.state_dict is None:
            raise CommandError(f"--init-weights {path} is {model_file.description}: training needs weights "
                               "(a state_dict, a checkpoint or .safetensors), not a serialized graph")
        return InitialWeights(model_file.state_dict, f"{path} ({model_file.description})",
                              {**file_provenance(path), "form": model_file.form})
    if modality == "image" and TORCHVISION_WEIGHTS_NAME.match(source):
        return from_torchvision(source, arch)
    raise CommandError(f"--init-weights {source}: no such file or export folder"
                       + ("; nor a torchvision weights name (IMAGENET1K_V1, DEFAULT)" if modality == "image" else ""))


def from_export(directory: Path, modality: str) -> InitialWeights:
    if not (directory / MODEL_JSON).is_file():
        raise CommandError(f"--init-weights {directory} is a folder without {MODEL_JSON}: not an export")
    try:
        spec = read_spec(directory, modality)
    except ValueError as error:
        raise CommandError(f"--init-weights: {error}") from None
    if not (directory / WEIGHTS_FILE).is_file():
        raise CommandError(f"--init-weights {directory} has no {WEIGHTS_FILE} (its runtime is "
                           f"{spec.get('runtime')}): start from the eager export it was made from")
    state_dict = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    labels = read_labels(directory)
    return InitialWeights(state_dict, f"export {directory} ({spec['arch']}, {len(labels)} labels)",
                          {"export": spec["name"], "directory": str(directory), "arch": spec["arch"],
                           **{key: value for key, value in file_provenance(directory / WEIGHTS_FILE).items() if key != "file"}},
                          labels=labels, spec=spec, directory=directory)


def torchvision_weights(name: str, arch: str):
    """torchvision's WeightsEnum member for `name` (IMAGENET1K_V1, DEFAULT, or ResNet18_Weights.IMAGENET1K_V1)."""
    import torchvision

    try:
        if "." in name:
            weights = torchvision.models.get_weight(name)
            if weights not in list(torchvision.models.get_model_weights(arch)):
                raise CommandError(f"--init-weights {name} are not weights of --arch {arch}")
            return weights
        enum = torchvision.models.get_model_weights(arch)
    except (KeyError, ValueError, AttributeError) as error:
        raise CommandError(f"--init-weights {name}: not a torchvision weights name for {arch} ({error})") from None
    if name not in enum.__members__:
        raise CommandError(f"--init-weights {name}: no such file or export folder, nor weights of {arch} in "
                           f"torchvision; valid choices: {', '.join(enum.__members__)}")
    return enum[name]


def cached_weights_path(weights) -> Path:
    """Where torchvision's loader looks for `weights` before fetching: torch.hub's cache
    ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def from_torchvision(name: str, arch: str) -> InitialWeights:
    weights = torchvision_weights(name, arch)
    cached = cached_weights_path(weights)
    try:
        # torchvision's own loader: the cached file, or a download into the cache when it is not there.
        # No hash check: a file put there by hand (offline) is refused by the shape check below if it is
        # not these weights, and a converted or re-saved copy is still accepted.
        state_dict = weights.get_state_dict(progress=False, check_hash=False, weights_only=True)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        if cached.is_file():
            raise CommandError(f"--init-weights {name}: {cached} cannot be read ({error})") from None
        reason = getattr(error, "reason", error)
        raise CommandError(f"--init-weights {name}: torchvision's {weights} are not in torch.hub's cache and could not "
                           f"be downloaded ({reason}). Offline, fetch {weights.url} elsewhere and put it at {cached} "
                           f"(the folder is torch.hub's cache: $TORCH_HOME/hub/checkpoints)") from None
    except Exception as error:  # torch.load on a corrupt cached file raises RuntimeError or UnpicklingError
        raise CommandError(f"--init-weights {name}: {cached} is corrupt or not these weights ({error})") from None
    transforms = weights.transforms()
    preprocess = {"resize": int(transforms.resize_size[0]), "crop": int(transforms.crop_size[0]),
                  "mean": list(transforms.mean), "std": list(transforms.std)}
    return InitialWeights(dict(state_dict), f"torchvision's {weights} ({cached})",
                          {"torchvision": str(weights), "url": weights.url, **file_provenance(cached)},
                          labels=list(weights.meta.get("categories") or []) or None, preprocess=preprocess)


# ---- using them ----------------------------------------------------------------------------------------
@dataclass
class Head:
    keys: List[str]  # the classifier head's tensors
    replaced: bool   # whether they start afresh (True) or from the initial weights


def apply_initial_weights(model: nn.Module, initial: InitialWeights, *, arch: str, modality: str, model_args: dict,
                          labels: List[str], log=print) -> Head:
    """Load `initial` into `model` (built as `arch` with `model_args` for `labels`). The head keeps the
    weights' values only when it has as many outputs as `labels` and, where the weights' labels are
    known, the same ones."""
    try:
        fitted = fit_state_dict(initial.state_dict, model, arch=arch, modality=modality, model_args=model_args,
                                replace_head=True, source=f"--init-weights {initial.description}")
    except CheckpointError as error:
        raise CommandError(str(error)) from None
    head = sorted(head_axes(arch, modality, model_args))
    if fitted.replaced_head:
        why = f"the weights have {fitted.weights_outputs} outputs, the data {len(labels)} classes"
    elif initial.labels is not None and list(initial.labels) != list(labels):
        fitted.state_dict = {key: value for key, value in fitted.state_dict.items() if key not in head}
        fitted.replaced_head = head
        why = f"the weights' labels ({_few(initial.labels)}) are not the data's ({_few(labels)})"
    else:
        why = None
    load_fitted(model, fitted)
    if why:
        log(f"initial weights: {initial.description}; the classifier head ({', '.join(head)}) is new: {why}")
    else:
        log(f"initial weights: {initial.description}, the classifier head ({', '.join(head)}) included")
    return Head(head, why is not None)


def _few(labels: List[str], shown: int = 4) -> str:
    return ", ".join(labels[:shown]) + (f" ... {len(labels)} in all" if len(labels) > shown else "")


def parameter_groups(model: nn.Module, head: Head, lr: float, *, freeze_backbone: bool,
                     backbone_lr_scale: float) -> List[dict]:
    """Optimizer parameter groups: the head at `lr`, the rest at lr x backbone_lr_scale, or frozen."""
    head_names = set(head.keys)
    head_parameters, backbone = [], []
    for name, parameter in model.named_parameters():
        (head_parameters if name in head_names else backbone).append(parameter)
    if freeze_backbone:
        for parameter in backbone:
            parameter.requires_grad_(False)
        return [{"params": head_parameters, "lr": lr}]
    return [{"params": backbone, "lr": lr * backbone_lr_scale}, {"params": head_parameters, "lr": lr}]


def initialized_from(initial: InitialWeights, head: Head, args) -> dict:
    """model.json's "initialized_from": where the weights came from and what training did with them."""
    return {**initial.provenance, "head_replaced": head.replaced, "freeze_backbone": args.freeze_backbone,
            "backbone_lr_scale": args.backbone_lr_scale}


def start_from(model: nn.Module, initial: InitialWeights, args, *, modality: str, model_args: dict,
               labels: List[str], lr: float) -> Tuple[List[dict], dict]:
    """A training script's fine-tuning start: `initial` loaded into `model`, the optimizer's parameter
    groups (--freeze-backbone, --backbone-lr-scale), and model.json's "initialized_from" entry."""
    head = apply_initial_weights(model, initial, arch=args.arch, modality=modality, model_args=model_args,
                                 labels=list(labels))
    groups = parameter_groups(model, head, lr, freeze_backbone=args.freeze_backbone,
                              backbone_lr_scale=args.backbone_lr_scale)
    return groups, {"initialized_from": initialized_from(initial, head, args)}
