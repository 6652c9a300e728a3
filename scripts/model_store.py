"""What a model store holds: each archive's model name and version, read from its manifest.

A model's name and version come from the archive (MAR-INF/MANIFEST.json), not its file name: a store
may hold image_classifier.mar (1.0) beside image_classifier-2.0.mar, two versions of one model.
"""
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class Archive:
    path: Path
    model: str
    version: str


def read_archive(path: Path) -> Archive:
    """The archive's model name and version; ValueError naming the file when it is not a readable .mar."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        return Archive(Path(path), manifest["model"]["modelName"], str(manifest["model"]["modelVersion"]))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise ValueError(f"{path} is not a readable model archive ({type(error).__name__}: {error})") from None


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
