"""Out of memory in the forward pass: recognised from each allocator's error, and survived by
running the batch again in halves, down to single items; an item that runs out of memory alone is
answered 507 while every other item keeps its own answer, and the worker serves the next batch."""
import logging
from typing import List, Tuple

import torch

from item_errors import ItemError

logger = logging.getLogger(__name__)
OUT_OF_MEMORY_COUNTER = "ts_handler_out_of_memory"


def is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA allocator raises torch.OutOfMemoryError; its CPU allocator and ONNX Runtime raise
    RuntimeErrors that say so in words."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        words in message for words in ("out of memory", "can't allocate memory", "failed to allocate memory"))


def out_of_memory_error(device: torch.device) -> ItemError:
    # 507 Insufficient Storage, as TorchServe itself answers for a batch lost with its worker: the
    # server, not the request, ran short; the client may retry, or send a smaller input.
    return ItemError(507, "OutOfMemory", f"the model ran out of memory ({device.type}) on this request even "
                                         "alone in its batch; retry later, or send a smaller input")


def probabilities_halving_on_out_of_memory(handler, inputs, items: list) -> Tuple[torch.Tensor, List[int]]:
    """handler.probabilities(inputs), and the positions of the items that ran out of memory even alone
    (their rows are NaN). When the forward pass runs out of memory, each half of `items` is collated
    and run again, recursively. Splitting is sound because a classifier in eval mode treats the items
    of a batch independently (no batch statistics): a half yields the same rows. Any other exception
    propagates (handle answers the batch 500)."""
    exhausted: List[int] = []
    return _halving(handler, inputs, items, 0, exhausted), exhausted


def _halving(handler, inputs, items: list, offset: int, exhausted: List[int]) -> torch.Tensor:
    try:
        return handler.probabilities(inputs)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        logger.warning("out of memory (%s) on %d item(s)%s: %s", handler.device, len(items),
                       "; retrying in halves" if len(items) > 1 else "", str(error).splitlines()[0][:300])
        handler.context.metrics.add_counter(OUT_OF_MEMORY_COUNTER, 1, None, handler.metric_dimensions())
    # Retried out of the except block: the exception's traceback holds the failed forward's frames
    # and tensors, and the device memory is freed only once they are gone.
    del inputs
    if handler.device.type == "cuda":
        torch.cuda.empty_cache()
    if len(items) == 1:
        exhausted.append(offset)
        return torch.full((1, len(handler.labels)), float("nan"))
    half = len(items) // 2
    first, second = items[:half], items[half:]
    return torch.cat([_halving(handler, handler.collate(first), first, offset, exhausted),
                      _halving(handler, handler.collate(second), second, offset + half, exhausted)])
