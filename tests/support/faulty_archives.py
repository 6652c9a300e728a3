"""Archives that fail on purpose, rewritten from a real .mar: the live fault test
(tests/integration/test_model_faults_live.py) and the live monitoring test
(tests/integration/test_monitoring_live.py) both serve the out-of-memory text model, so both take it from
here rather than one test module importing the other's.

- `rewrite_archive`: a copy of an archive under another model name, with files dropped, added or edited;
- `write_oom_archive`: the text archive whose handler's real forward pass is refused by a simulated
  allocator on batches of more than 2 items and on any batch holding TOO_LARGE (everything else, the
  handler's split-in-halves retry included, is the real code); TEXTS are texts it answers.
"""
import json
import re
import zipfile
from pathlib import Path

OOM_MODEL = "text_classifier_oom"
OOM_HANDLER = '''"""Test-only: the text handler whose forward pass runs out of memory above 2 items."""
import torch

from text_classifier_handler import TextClassifierHandler


class OutOfMemoryAboveTwoItems(TextClassifierHandler):
    def forward(self, batch):
        logits = super().forward(batch)
        texts = batch[0]
        if logits.shape[0] > 2 or any("exhaust memory" in text for text in texts):
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated, {len(texts)} items)")
        return logits
'''
TEXTS = ["my card was charged twice", "where is my parcel", "I cannot log in", "please cancel my plan",
         "the app crashes on start", "do you sell gift cards", "great service, thank you"]
TOO_LARGE = "this one will exhaust memory on its own"


def rewrite_archive(source, destination, model_name: str, drop=(), add=None, manifest_changes=None, yaml_changes=None):
    """A copy of the .mar `source` under another model name, with files dropped, added or edited."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as copy:
        for info in original.infolist():
            if info.filename in drop:
                continue
            data = original.read(info.filename)
            if info.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"].update(modelName=model_name, **(manifest_changes or {}))
                data = json.dumps(manifest).encode()
            elif info.filename.endswith(".yaml") and yaml_changes:
                text = data.decode()
                for key, value in yaml_changes.items():
                    text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.M)
                data = text.encode()
            copy.writestr(info, data)
        for name, text in (add or {}).items():
            copy.writestr(name, text)


def write_oom_archive(text_archive: Path, store: Path) -> Path:
    """OOM_MODEL's archive in `store`, from the text model's real archive `text_archive`. Its maxBatchDelay
    is 500 ms: concurrent requests meet in one batch, which the simulated allocator refuses."""
    destination = Path(store) / f"{OOM_MODEL}.mar"
    rewrite_archive(text_archive, destination, OOM_MODEL, add={"oom_text_handler.py": OOM_HANDLER},
                    manifest_changes={"handler": "oom_text_handler.py"}, yaml_changes={"maxBatchDelay": 500})
    return destination
