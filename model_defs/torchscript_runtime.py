"""An imported TorchScript archive (torch.jit.save) as the handler's model, served as it is.

exports/<name>/model.torchscript.pt is the user's file, byte for byte; model.json says
"runtime": "torchscript". The archive is loaded with torch.jit.load, which rebuilds the module from
the code stored in it (no Python class of the user's is needed, unlike a pickled module), and wrapped
in an nn.Module that answers the handler's calls as an eager model does, with the input helpers of
the registered architecture it was declared as (a text model's batch_inputs), when one was.
"""
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .export import LoadedExport, attach_input_helpers, checked_labels, meta_architecture, read_spec

TORCHSCRIPT_FILE = "model.torchscript.pt"
RUNTIME = "torchscript"  # model.json's "runtime"


class TorchScriptModel(nn.Module):
    """A ScriptModule behind the eager model's call signature (positional or keyword tensors in, logits out)."""

    def __init__(self, scripted: torch.jit.ScriptModule, architecture: Optional[nn.Module] = None):
        super().__init__()
        self.scripted = scripted
        attach_input_helpers(self, architecture)

    def forward(self, *args, **kwargs):
        return self.scripted(*args, **kwargs)


def load_torchscript(path, device="cpu", architecture: Optional[nn.Module] = None) -> TorchScriptModel:
    """The TorchScript archive at `path` on `device`, in eval mode."""
    with warnings.catch_warnings():
        # torch 2.14 calls TorchScript deprecated in favour of torch.export; archives people have still load.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(path), map_location=device)
    return TorchScriptModel(scripted, architecture).to(device).eval()


def load_torchscript_export(export_dir, device="cpu", modality: Optional[str] = None) -> LoadedExport:
    """An imported TorchScript export as LoadedExport, its model a TorchScriptModel."""
    export_dir = Path(export_dir)
    spec = read_spec(export_dir, modality)
    if spec.get("runtime") != RUNTIME:
        raise ValueError(f"{export_dir / TORCHSCRIPT_FILE} is a TorchScript archive, but its model.json has "
                         f"runtime {spec.get('runtime')!r}, not {RUNTIME!r}: it is not a TorchScript export's model.json")
    model = load_torchscript(export_dir / TORCHSCRIPT_FILE, device, meta_architecture(spec))
    return LoadedExport(model=model, spec=spec, labels=checked_labels(export_dir, spec), directory=export_dir)
