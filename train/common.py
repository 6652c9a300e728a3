"""Training-loop pieces every modality's script shares: seeding, the epoch loop, evaluation and
the held-out split of a user's data set."""
import os
import random
import time
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_all_cores() -> int:
    """Train on every core, unless OMP_NUM_THREADS says otherwise (e.g. beside other jobs)."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def heldout_split(count: int, fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Seeded shuffle of range(count) into (train, held-out) index lists; both non-empty."""
    if count < 2:
        raise ValueError(f"need at least 2 examples to hold some out, got {count}")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    heldout = min(count - 1, max(1, round(count * fraction)))
    return order[heldout:], order[:heldout]


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, loss_fn: Callable, forward: Callable) -> float:
    """One pass over `loader`; `forward(model, batch)` returns (logits, targets). Returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        logits, targets = forward(model, batch)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(targets)
        count += len(targets)
    return total / max(count, 1)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, forward: Callable) -> float:
    """Top-1 accuracy over `loader`, in eval mode (the mode the handler serves in)."""
    model.eval()
    correct, count = 0, 0
    for batch in loader:
        logits, targets = forward(model, batch)
        correct += int((logits.argmax(dim=1) == targets).sum())
        count += len(targets)
    return correct / max(count, 1)


OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")


def fit(model, train_loader, heldout_loader, *, epochs: int, lr: float, weight_decay: float,
        forward: Callable, optimizer: str = "adamw", label_smoothing: float = 0.0, log=print) -> dict:
    """Train with a one-cycle schedule; prints each epoch; returns the held-out accuracy and time."""
    optimizer = make_optimizer(optimizer, model, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train_loader), pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    started = time.perf_counter()
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        loss = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, forward)
        accuracy = evaluate(model, heldout_loader, forward)
        log(f"epoch {epoch}/{epochs}  loss {loss:.4f}  held-out accuracy {accuracy:.4f}  ({time.perf_counter() - started:.0f}s)")
    return {"heldout_accuracy": round(accuracy, 4), "train_seconds": round(time.perf_counter() - started, 1), "epochs": epochs}


def check_labels(names: Sequence[str]) -> None:
    if len(names) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, found {len(names)}: {list(names)}")
