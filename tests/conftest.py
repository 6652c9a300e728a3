import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Handlers import their shared modules (batch_handler, ...) and `model_defs` top-level, as they do inside an archive.
for path in (REPO_ROOT, REPO_ROOT / "handlers", REPO_ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
