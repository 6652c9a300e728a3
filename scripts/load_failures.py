"""Which models TorchServe failed to load, and why, read from its logs.

A worker that dies while loading its model (a broken archive: model.json missing, a bad model-config,
an import error) is retried by TorchServe for ever, with a growing back-off (1, 1, 2, 3, 5, 8 ... s);
the management API keeps listing the model, with workers that never become READY, and says nothing
of why. Without this, `make serve` and the live fixture would wait out their whole timeout (300 s)
for a model that cannot load. The reason is in the logs: ts_log.log says "Load model failed: <model>",
and the worker's own output in model_log.log ends with the exception that killed it.
(scripts/readiness.py waits with these. The lines read are TorchServe's own, not this bundle's.)
"""
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

LOAD_FAILED = re.compile(r"Load model failed: (?P<model>[^,\s]+), error: (?P<error>.*)$")
# Worker threads are named W-<port>-<model>_<version>; their stdout/stderr lines go to model_log.log.
WORKER_LINE = re.compile(r"W-\d+-(?P<model>.+)_(?P<version>[^_\s]+)-std(?:out|err) MODEL_LOG - (?P<text>.*)$")
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit): ")
# Two failed loads, not one: a first failure can be transient (the worker timed out starting on a
# loaded machine, a GPU still held by a dying worker), and the second comes a few seconds later.
FAILED_LOADS_TO_GIVE_UP = 2


LOG_FILES = ("ts_log.log", "model_log.log")


def log_sizes(log_dir: Path) -> Dict[str, int]:
    """Where each log ends now: `make serve` appends to the logs/ of earlier runs, whose failures are not this run's."""
    return {name: (Path(log_dir) / name).stat().st_size if (Path(log_dir) / name).exists() else 0 for name in LOG_FILES}


def _lines(path: Path, offset: int) -> List[str]:
    try:
        with open(path, "rb") as log:
            if log.seek(0, 2) < offset:  # rolled over since: read it all
                offset = 0
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def load_failures(log_dir: Path, since: Optional[Dict[str, int]] = None) -> Dict[str, Tuple[int, str]]:
    """model name → (how many times its worker failed to load, the last exception its workers printed),
    from the logs' lines after `since` (log_sizes() taken before the server started)."""
    since = since or {}
    failed_at = defaultdict(set)  # the frontend logs some lines twice: count distinct timestamps
    for line in _lines(Path(log_dir) / "ts_log.log", since.get("ts_log.log", 0)):
        match = LOAD_FAILED.search(line)
        if match:
            failed_at[match["model"]].add(line.split(" ", 1)[0])
    reasons: Dict[str, str] = {}
    for line in _lines(Path(log_dir) / "model_log.log", since.get("model_log.log", 0)):
        match = WORKER_LINE.search(line)
        if match and EXCEPTION_LINE.match(match["text"]):
            reasons[match["model"]] = match["text"].strip()
    return {model: (len(times), reasons.get(model, "the worker died while loading (see model_log.log)"))
            for model, times in failed_at.items()}

