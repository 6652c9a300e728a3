"""What happens to each item of a batch: its error (an `ItemError`, answered with its own 4xx/5xx
while its neighbours get their 200), its response headers, its answer, all kept in `PreparedBatch`
as the batch moves through preprocess, inference and postprocess."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch


class ItemError(Exception):
    """One request of a batch is unusable; it gets `status` and a JSON body, its neighbours are served."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def body(self) -> dict:
        return {"code": self.status, "type": self.error_type, "message": self.message}


def payload_too_large(what: str, size: int, limit: int, unit: str = "bytes") -> ItemError:
    return ItemError(413, "PayloadTooLarge", f"{what} is {size} {unit}, over the limit of {limit} {unit}")


def internal_error() -> ItemError:
    # Our own bug is not the client's fault: a 500 that says where to look, with no exception text or
    # traceback in the answer (they can name files, paths and internals); the worker log has them.
    return ItemError(500, "InternalServerError", "the model server failed while handling this request; "
                                                  "the worker log has the details")


@dataclass
class PreparedBatch:
    size: int                               # requests in the batch
    inputs: Any = None                      # what collate() built from the valid items
    items: list = field(default_factory=list)  # the valid items themselves: inference re-collates halves on out-of-memory
    # The request index of each item (each row of inputs). A plain request is one item; a KServe
    # v1/v2 request owns one item per instance, so its index repeats.
    valid_indices: List[int] = field(default_factory=list)
    errors: Dict[int, ItemError] = field(default_factory=dict)
    headers: Dict[int, Dict[str, str]] = field(default_factory=dict)
    probabilities: Optional[torch.Tensor] = None  # [len(valid_indices), num_labels], on CPU
    answers: Dict[int, List[Any]] = field(default_factory=dict)  # request index → one result per instance
    requests: Dict[int, Any] = field(default_factory=dict)  # request index → its protocols.Request

    def fail_valid_items(self, error: ItemError) -> None:
        """Every item that was still going to be answered gets `error` (its batch failed after collating)."""
        for index in self.valid_indices:
            self.errors[index] = error
        self.valid_indices, self.inputs, self.probabilities, self.answers = [], None, None, {}

    def indices_with_items(self) -> List[int]:
        """The requests that have items, in order, each once."""
        return list(dict.fromkeys(self.valid_indices))

    def positions(self, index: int) -> List[int]:
        """The rows of inputs that request `index` owns."""
        return [position for position, owner in enumerate(self.valid_indices) if owner == index]


def merge_headers(per_item: List[Dict[str, str]]) -> Dict[str, str]:
    """One request's headers from its items': a multi-instance request lists each item's value, in
    order, comma-separated, as HTTP joins repeated headers."""
    merged: Dict[str, List[str]] = {}
    for headers in per_item:
        for key, value in headers.items():
            merged.setdefault(key, []).append(value)
    return {key: ", ".join(values) for key, values in merged.items()}
