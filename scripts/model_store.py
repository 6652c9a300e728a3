"""What a model is and what a model store holds, read from the model's own files, never its name.

A model's name and version come from the archive (MAR-INF/MANIFEST.json), not its file name: a store
may hold image_classifier.mar (1.0) beside image_classifier-2.0.mar, two versions of one model. Its
modality and runtime come from its model.json (in exports/<model>/, or inside the .mar): a user's
`digits_classifier`, `fraud_onnx_v2` or `speech` is whatever its export says it is.
"""
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from model_defs.export import LABELS_FILE, MODEL_JSON, check_format_version, labels_in_order, read_spec
# model.json's runtime: none for an eager export ("torch"), "onnxruntime", "torchscript" (an imported archive)
from model_defs.serving import TORCH_RUNTIME, TORCHSCRIPT_RUNTIME


@dataclass(frozen=True)
class ModelKind:
    """What serving a model involves: its modality (image, text, audio) and its runtime."""
    modality: str
    runtime: str

    @classmethod
    def from_spec(cls, spec: dict) -> "ModelKind":
        return cls(spec["modality"], spec.get("runtime", TORCH_RUNTIME))

    @property
    def explainable(self) -> bool:
        """Whether /explanations serves it: Captum differentiates the torch runtimes only (ONNX ones
        answer 400 naming the eager model, docs/explanations.md), and an imported TorchScript text
        model hides the token embeddings its explanations need (handlers/model_runtime.py)."""
        return self.runtime == TORCH_RUNTIME or (self.runtime == TORCHSCRIPT_RUNTIME and self.modality != "text")


def export_kind(export_dir: Path) -> ModelKind:
    """The kind exports/<model>/model.json says the model is (refused when its format is newer than this code)."""
    return ModelKind.from_spec(read_spec(export_dir))


def export_kinds(exports_dir: Path, models: Iterable[str]) -> Dict[str, ModelKind]:
    return {model: export_kind(Path(exports_dir) / model) for model in models}


@dataclass(frozen=True)
class Archive:
    path: Path
    model: str
    version: str
    # None for an archive without a model.json: not one this bundle's archive.sh made. TorchServe still
    # loads it; when its handler is this bundle's, the worker fails and says why (scripts/readiness.py).
    kind: Optional[ModelKind]
    # The archive's model.json (None where kind is): what the model is made of, beyond its kind. An
    # ONNX variant's names the model it was converted from (source.name) and its quantization.
    spec: Optional[dict] = field(default=None, compare=False, repr=False)
    labels: Tuple[str, ...] = field(default=(), compare=False, repr=False)  # by class index, from index_to_name.json

    @property
    def variant_of(self) -> Optional[str]:
        """The model this one was converted from (an `_onnx` or `_int8` export's base), per its model.json."""
        return ((self.spec or {}).get("source") or {}).get("name")

    @property
    def reference(self) -> str:
        """"name/version", as the management and inference APIs address this version."""
        return f"{self.model}/{self.version}"


def read_archive(path: Path) -> Archive:
    """The archive's model name, version and kind; ValueError naming the file when it is not a readable
    .mar, or when its model.json is of a newer export format than this code reads."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            spec = json.loads(archive.read(MODEL_JSON)) if MODEL_JSON in archive.namelist() else None
            labels = labels_in_order(json.loads(archive.read(LABELS_FILE))) if LABELS_FILE in archive.namelist() else []
        kind = ModelKind.from_spec(check_format_version(spec, f"{path}'s {MODEL_JSON}")) if spec is not None else None
        return Archive(Path(path), manifest["model"]["modelName"], str(manifest["model"]["modelVersion"]), kind,
                       spec, tuple(labels))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise ValueError(f"{path} is not a readable model archive ({type(error).__name__}: {error})") from None


def kinds(archives: List[Archive]) -> Dict[str, ModelKind]:
    """Each model's kind, by name (its default version's, as default_versions picks it) and by
    "name/version"; archives without a model.json have none."""
    found: Dict[str, ModelKind] = {}
    defaults = default_versions(archives)
    for archive in archives:
        if archive.kind is not None:
            found[archive.reference] = archive.kind
            if defaults[archive.model] == archive.version:
                found[archive.model] = archive.kind
    return found


def scan(model_store: Path) -> Tuple[List[Archive], List[str]]:
    """Every readable archive in the store, by model name then version, and a message for each
    unreadable one (TorchServe still loads the others, so callers report these and go on)."""
    found, problems = [], []
    for path in sorted(Path(model_store).glob("*.mar")):
        try:
            found.append(read_archive(path))
        except ValueError as error:
            problems.append(str(error))
    return sorted(found, key=lambda archive: (archive.model, version_key(archive.version))), problems


def model_names(archives: List[Archive]) -> List[str]:
    return sorted({archive.model for archive in archives})


def version_key(version: str) -> tuple:
    """Versions in numeric order where they are numbers: 1.0 < 2.0 < 10.0."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in version.split("."))


def default_versions(archives: List[Archive]) -> Dict[str, str]:
    """model → the version that should answer /predictions/<model>: its lowest. TorchServe makes the
    first version it happens to load the default (file-system order), so a new version would
    otherwise take traffic at a restart by chance; promoting one is an explicit act (set-default)."""
    lowest: Dict[str, str] = {}
    for archive in archives:
        current = lowest.get(archive.model)
        if current is None or version_key(archive.version) < version_key(current):
            lowest[archive.model] = archive.version
    return lowest
