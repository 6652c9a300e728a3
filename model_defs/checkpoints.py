"""Reading a model someone already has, in the forms people save, and fitting its weights to an architecture.

`read_model_file(path)` tells the forms apart by their content (the suffix only breaks a tie):

    state_dict    a plain state_dict: torch.save(model.state_dict(), "x.pt" / ".pth" / ".bin")
    checkpoint    a dict that nests the state_dict under a usual key ("state_dict", "model_state_dict",
                  "model", "net" ...) beside optimizer, scheduler and epoch entries
    safetensors   a .safetensors file
    pickled       a pickled nn.Module (torch.save(model)), or a checkpoint holding one: refused unless
                  the caller trusts the file, since unpickling it runs code the file names
    torchscript   a torch.jit.save archive, served as it is
    onnx          an ONNX graph, served on ONNX Runtime

Every torch file loads with weights_only=True: tensors, containers and a few plain data types that
training scripts put beside the weights (argparse.Namespace, paths, numpy scalars and arrays), never
an arbitrary class. `fit_state_dict` then strips the prefixes training wrappers add (`module.` from
DataParallel/DDP, `_orig_mod.` from torch.compile, `model.` from Lightning ...) and compares the keys
and shapes with the architecture's, so a wrong model is named, every difference listed, before anything
is loaded or written.
"""
import argparse
import hashlib
import pathlib
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .export import build_on_meta
from .registry import available_architectures

STATE_DICT, CHECKPOINT, SAFETENSORS, PICKLED, TORCHSCRIPT, ONNX = (
    "state_dict", "checkpoint", "safetensors", "pickled", "torchscript", "onnx")

# Where checkpoints put the state_dict, most specific first: Lightning and most scripts ("state_dict"),
# the PyTorch tutorials ("model_state_dict"), torchvision's references, timm, DeiT and nanoGPT ("model"),
# and older research code ("net", "network", "module" ...). An EMA copy ("model_ema") is not taken by
# default: it is a choice (--checkpoint-key model_ema).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")
# Prefixes that training wrappers add to every key: DataParallel/DDP, torch.compile, Lightning's
# LightningModule attribute, and the usual attribute names of a wrapper module.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.")
# Entries of a state_dict that are the wrapper's bookkeeping, not the model's: AveragedModel (EMA/SWA).
BOOKKEEPING_KEYS = ("n_averaged",)
# Plain data that checkpoints carry beside the weights, allowed under weights_only: constructing them
# runs no code of the file's choosing. torchvision's reference scripts save their argparse.Namespace
# (with paths in it); others save numpy scalars (a best accuracy) or small arrays.
SAFE_DATA_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                     pathlib.PureWindowsPath, np.dtype, np.ndarray, np._core.multiarray.scalar,
                     np._core.multiarray._reconstruct, *(type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG")]
TRUST_FLAG = "--trust-pickle"


class CheckpointError(ValueError):
    """The file cannot be used as it is; the message names the file and what to do."""


class WeightsMismatchError(CheckpointError):
    """The weights do not fit the architecture: `mismatch` lists every difference."""

    def __init__(self, message: str, mismatch: "WeightsMismatch"):
        super().__init__(message)
        self.mismatch = mismatch


class HeadWidthError(CheckpointError):
    """Everything fits but the classifier head, whose width is the weights' number of outputs."""

    def __init__(self, message: str, weights_outputs: int, head_keys: List[str]):
        super().__init__(message)
        self.weights_outputs, self.head_keys = weights_outputs, head_keys


# ---- provenance ---------------------------------------------------------------------------------------
def file_provenance(path) -> dict:
    """What model.json records of a file a model came from: its name, size and SHA-256."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


# ---- reading -------------------------------------------------------------------------------------------
@dataclass
class ModelFile:
    """What a file holds: its form, its state_dict for the weights forms (None for a TorchScript or ONNX
    file, which are served as they are), and a sentence saying where the weights were found."""

    path: Path
    form: str
    state_dict: Optional[Dict[str, torch.Tensor]] = None
    description: str = ""

    @property
    def serialized(self) -> bool:
        return self.form in (TORCHSCRIPT, ONNX)


def read_model_file(path, *, trust_pickle: bool = False, checkpoint_key: Optional[str] = None) -> ModelFile:
    """The model in `path`, in whichever form it is; CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'a directory, not a file' if path.is_dir() else 'no such file'}")
    with open(path, "rb") as source:
        head = source.read(16)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            raise _corrupt(path, error) from None
        if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
            return ModelFile(path, TORCHSCRIPT, description="a TorchScript archive (torch.jit.save)")
        return _read_torch_file(path, trust_pickle, checkpoint_key)
    if head.startswith(b"PK"):
        raise _corrupt(path, "a zip archive (torch.save's format) whose central directory is missing: truncated?")
    if _looks_like_safetensors(head) or path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    if head[:1] == b"\x80":  # a pickle (torch.save's legacy, non-zip format)
        return _read_torch_file(path, trust_pickle, checkpoint_key)
    if path.suffix.lower() == ".onnx" or _parses_as_onnx(path):
        _check_onnx(path)
        return ModelFile(path, ONNX, description="an ONNX graph")
    raise CheckpointError(f"{path} is not a model file this reads (its first bytes are {head[:8]!r}): expected a "
                          "torch.save file (.pt, .pth, .bin), a .safetensors file, a TorchScript archive or an ONNX graph")


def _corrupt(path: Path, reason) -> CheckpointError:
    reason = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    return CheckpointError(f"{path} is corrupt or truncated: {reason}")


def _looks_like_safetensors(head: bytes) -> bool:
    # 8 bytes of little-endian header length, then the JSON header itself.
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27)


def _read_safetensors(path: Path) -> ModelFile:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state_dict = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise _corrupt(path, f"not a readable .safetensors file ({error})") from None
    if not state_dict:
        raise CheckpointError(f"{path} holds no tensors")
    return ModelFile(path, SAFETENSORS, dict(state_dict), "a .safetensors file")


def _parses_as_onnx(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # any parse failure: not ONNX
        return False
    return bool(model.graph.node) and bool(model.graph.input)


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as error:  # onnx raises its own ValidationError, or a protobuf DecodeError
        raise _corrupt(path, f"not a valid ONNX graph ({type(error).__name__}: {error})") from None


def _read_torch_file(path: Path, trust_pickle: bool, checkpoint_key: Optional[str]) -> ModelFile:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(SAFE_DATA_GLOBALS):
            warnings.simplefilter("ignore")  # torch's own advice to pass weights_only=False: the opposite of ours
            content = torch.load(path, map_location="cpu", weights_only=True)
        trusted = False
    except pickle.UnpicklingError as error:
        classes = _unsafe_globals(path, error)
        if not classes:
            raise _corrupt(path, _torch_reason(error)) from None
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds pickled Python objects ({', '.join(classes)}), not only weights. Loading it means "
                f"unpickling, which runs code that the file names: refused. If you trust where the file came from, "
                f"pass {TRUST_FLAG} to load it anyway; better, save the weights alone: "
                f"torch.save(model.state_dict(), 'weights.pt')") from None
        content, trusted = _load_trusted(path), True
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, ImportError) as error:
        raise _corrupt(path, _torch_reason(error)) from None
    state_dict, where = find_state_dict(content, path, checkpoint_key)
    form = PICKLED if trusted else (STATE_DICT if where is None else CHECKPOINT)
    description = {STATE_DICT: "a plain state_dict",
                   CHECKPOINT: f"a checkpoint; the weights under {where}",
                   PICKLED: f"pickled objects, unpickled ({TRUST_FLAG}); the weights {where or 'at the top level'}"}[form]
    return ModelFile(path, form, state_dict, description)


def _torch_reason(error: Exception) -> str:
    message = str(error)
    operand = re.search(r"WeightsUnpickler error: (.+)", message)
    return (operand.group(1) if operand else message.splitlines()[0] if message else type(error).__name__).strip()


def _unsafe_globals(path: Path, error: Exception) -> List[str]:
    """The classes and functions a pickle names that weights_only refuses (empty: not that refusal)."""
    named = re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))
    if not named:
        return []
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # all of them, for a zip file
    except Exception:  # a legacy-format file: the one the error named
        found = []
    allowed = {f"{item.__module__}.{item.__qualname__}" for item in SAFE_DATA_GLOBALS}
    return sorted(set(found) - allowed) or named


def _load_trusted(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as error:
        raise CheckpointError(f"{path} was unpickled ({TRUST_FLAG}) but names code that is not importable here "
                              f"({error}): run from the folder that has the model's module, or set PYTHONPATH to it; "
                              "better, save the weights alone: torch.save(model.state_dict(), 'weights.pt')") from None
    except Exception as error:  # unpickling a trusted file can fail in any way its code does
        raise _corrupt(path, f"{type(error).__name__}: {error}") from None


def _tensor_dict(value) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items()))


def _weights_of(value) -> Optional[Dict[str, torch.Tensor]]:
    if isinstance(value, nn.Module):
        return dict(value.state_dict())
    return dict(value) if _tensor_dict(value) else None


def find_state_dict(content, path, checkpoint_key: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """(the state_dict, where it was: None at the top level, else a phrase naming the key) of what
    torch.load returned: a state_dict, a pickled module, or a checkpoint dict nesting either."""
    if checkpoint_key is None:
        weights = _weights_of(content)
        if weights is not None:
            return weights, None if not isinstance(content, nn.Module) else f"of a pickled {type(content).__name__}"
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path} holds a {type(content).__name__}, not a state_dict or a checkpoint dict")
    if checkpoint_key is not None:
        if checkpoint_key not in content:
            raise CheckpointError(f"{path} has no key {checkpoint_key!r} (--checkpoint-key); "
                                  f"its keys: {', '.join(map(repr, content))}")
        weights = _weights_of(content[checkpoint_key])
        if weights is None:
            raise CheckpointError(f"{path}'s {checkpoint_key!r} holds a {type(content[checkpoint_key]).__name__}, "
                                  "not weights (a dict of tensors or a module)")
        return weights, _beside(content, checkpoint_key)
    usable = [key for key, value in content.items() if _weights_of(value) is not None]
    for key in STATE_DICT_KEYS:
        if key in usable:
            return _weights_of(content[key]), _beside(content, key)
    if len(usable) == 1:
        return _weights_of(content[usable[0]]), _beside(content, usable[0])
    if usable:
        raise CheckpointError(f"{path} holds several sets of weights ({', '.join(map(repr, usable))}): "
                              "name the one to serve with --checkpoint-key")
    for key in STATE_DICT_KEYS:  # one level deeper: {"model": {"state_dict": ...}}
        if isinstance(content.get(key), Mapping):
            try:
                weights, inner = find_state_dict(content[key], path)
            except CheckpointError:
                continue
            return weights, f"{key!r} → {inner or 'its top level'}"
    raise CheckpointError(f"{path} holds no weights: a dict whose keys ({', '.join(map(repr, content))}) "
                          "hold no state_dict (a dict of tensors)")


def _beside(content: Mapping, key: str) -> str:
    others = [str(other) for other in content if other != key]
    return f"{key!r}" + (f" (beside {', '.join(others)})" if others else "")


# ---- fitting the weights to an architecture -----------------------------------------------------------
@dataclass
class WeightsMismatch:
    """How a state_dict differs from an architecture's: keys it lacks, keys it has that the
    architecture does not, and the keys both have at different shapes (weights' shape, model's shape)."""

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shapes: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)

    def lines(self, shown: int = 20) -> List[str]:
        """Each difference on its own line: every shape mismatch, and the first `shown` of each key list."""
        lines = []
        for title, keys in (("missing keys (the architecture has them, the weights do not)", self.missing),
                            ("unexpected keys (the weights have them, the architecture does not)", self.unexpected)):
            if keys:
                lines.append(f"{len(keys)} {title}:")
                lines += [f"  {key}" for key in keys[:shown]]
                if len(keys) > shown:
                    lines.append(f"  ... and {len(keys) - shown} more")
        if self.shapes:
            lines.append(f"{len(self.shapes)} shape mismatches (weights vs architecture):")
            lines += [f"  {key}: {list(got)} vs {list(want)}" for key, got, want in self.shapes]
        return lines


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor],
                           expected_keys: Sequence[str] = ()) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """(the state_dict without the prefixes a wrapper put on every key, the prefixes stripped in order).
    A prefix is stripped only while every key has it and the architecture's own keys do not all start
    with it (a model whose top module is really called `model` keeps it)."""
    keys, stripped = list(state_dict), []
    while keys:
        prefix = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in keys)
                       and not (expected_keys and all(key.startswith(p) for key in expected_keys))), None)
        if prefix is None:
            break
        stripped.append(prefix)
        keys = [key[len(prefix):] for key in keys]
    cleaned = {key: tensor for key, tensor in zip(keys, state_dict.values())}
    for key in BOOKKEEPING_KEYS:
        cleaned.pop(key, None)
    return cleaned, stripped


def compare(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> WeightsMismatch:
    # BatchNorm's num_batches_tracked is absent from checkpoints saved before torch 0.4.1 (torchvision's
    # own ImageNet weights among them); BatchNorm fills it in when loading, so it is not missing.
    return WeightsMismatch(
        missing=[key for key in expected if key not in state_dict and not key.endswith(".num_batches_tracked")],
        unexpected=[key for key in state_dict if key not in expected],
        shapes=[(key, tuple(state_dict[key].shape), tuple(tensor.shape)) for key, tensor in expected.items()
                if key in state_dict and tuple(state_dict[key].shape) != tuple(tensor.shape)],
    )


def _meta_state(arch: str, modality: str, model_args: dict, or_on_cpu: bool = True) -> Dict[str, torch.Tensor]:
    """The architecture's state_dict shapes, built on the meta device where it can be (build_on_meta)."""
    return dict(build_on_meta(arch, modality, model_args, or_on_cpu=or_on_cpu).state_dict())


def head_axes(arch: str, modality: str, model_args: dict) -> Dict[str, int]:
    """The classifier head's tensors and the axis of each that is the number of classes, found by
    building the architecture for two class counts: whatever changes shape is the head."""
    width = int(model_args["num_classes"])
    one, other = (_meta_state(arch, modality, {**model_args, "num_classes": n}) for n in (width, width + 1))
    axes = {}
    for key, tensor in one.items():
        if tensor.shape != other[key].shape:
            axes[key] = next(axis for axis, (a, b) in enumerate(zip(tensor.shape, other[key].shape)) if a != b)
    return axes


@dataclass
class FittedWeights:
    """A state_dict ready for `model.load_state_dict(strict=False)`, and what was done to get it."""

    state_dict: Dict[str, torch.Tensor]
    stripped_prefixes: List[str]
    replaced_head: List[str]   # head keys left at the model's fresh initialisation (empty: none)
    weights_outputs: int       # the head width of the weights as given


def fit_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module, *, arch: str, modality: str,
                   model_args: dict, replace_head: bool = False, source="the weights") -> FittedWeights:
    """Strip wrapper prefixes and check that `state_dict` fits `model` (built as `arch` with `model_args`).

    A head of another width than model_args["num_classes"] raises HeadWidthError, or with `replace_head`
    is left out (the model keeps its fresh head). Any other difference raises WeightsMismatchError,
    listing every difference, and the registered architectures the weights do fit, when there are any.
    """
    expected = model.state_dict()
    cleaned, stripped = strip_wrapper_prefixes(state_dict, list(expected))
    mismatch = compare(cleaned, expected)
    # Only a shape difference can be the head's: the two builds that find the head are skipped for
    # weights whose shapes all fit.
    head = head_axes(arch, modality, model_args) if mismatch.shapes else {}
    wrong_head = [key for key, _, _ in mismatch.shapes if key in head]
    others = WeightsMismatch(mismatch.missing, mismatch.unexpected, [s for s in mismatch.shapes if s[0] not in head])
    if not others.fits:
        fitting = architectures_fitting(cleaned, modality, model_args, exclude=arch)
        hint = f"\nthe weights fit: {', '.join(fitting)} (--arch)" if fitting else ""
        raise WeightsMismatchError(f"{source} do not fit architecture {arch}:\n" + "\n".join(others.lines()) + hint,
                                   others)
    outputs = int(model_args["num_classes"])
    if wrong_head:
        key = wrong_head[0]
        outputs = int(cleaned[key].shape[head[key]])
        if not replace_head:
            raise HeadWidthError(f"{source} have {outputs} outputs ({', '.join(wrong_head)}) but the model is built "
                                 f"for {model_args['num_classes']}", outputs, wrong_head)
        cleaned = {key: tensor for key, tensor in cleaned.items() if key not in wrong_head}
    return FittedWeights(cleaned, stripped, wrong_head, outputs)


def load_fitted(model: nn.Module, fitted: FittedWeights) -> nn.Module:
    """Load checked weights: strict but for the head keys fit_state_dict left out on purpose (and the
    num_batches_tracked counters of old checkpoints, which BatchNorm fills in)."""
    result = model.load_state_dict(fitted.state_dict, strict=False)
    missing = [key for key in result.missing_keys if key not in fitted.replaced_head]
    if missing or result.unexpected_keys:  # fit_state_dict checked both: a bug if reached
        raise RuntimeError(f"load_state_dict: missing {missing}, unexpected {result.unexpected_keys}")
    return model


def architectures_fitting(state_dict: Mapping[str, torch.Tensor], modality: str, model_args: dict,
                          exclude: str = "") -> List[str]:
    """The registered architectures of `modality` that `state_dict` fits, head width aside: a hint for
    a user who named the wrong one. Architectures that cannot be built on the meta device are skipped."""
    fitting = []
    for arch in available_architectures(modality):
        if arch == exclude:
            continue
        try:
            # A RegNet, built for real, would take seconds each: the hint skips what meta cannot build.
            mismatch = compare(state_dict, _meta_state(arch, modality, model_args, or_on_cpu=False))
            # Most architectures differ in their keys already: the head is looked for only where they agree.
            if not mismatch.missing and not mismatch.unexpected:
                head = head_axes(arch, modality, model_args)
                if all(key in head for key, _, _ in mismatch.shapes):
                    fitting.append(arch)
        except Exception:  # a builder that needs other arguments, or real tensors (RegNet's)
            continue
    return fitting
