"""What every modality's training script shares: the arguments that mean the same in all three,
seeding and threads, the epoch loop and evaluation, the metrics an export records (an untrained
one's too), reading a user's folder data set and holding part of it out, and ending on a bad --data
with one message instead of a traceback."""
import argparse
import os
import random
import time
from pathlib import Path
from typing import Callable, Collection, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
from torch import nn

from model_defs.registry import check_architecture

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[1]  # default --out is in the checkout, wherever it is run from


# ---- the command line ----------------------------------------------------------------------------
class CommandError(Exception):
    """An input of the command cannot be used; the message names it and the problem."""


class DataError(CommandError):
    """--data cannot be used; the message names the path and the problem."""


def run(main: Callable, parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """A script's entry point: parse its command line (`argv`, default sys.argv) and run. A CommandError
    ends it the way argparse ends a bad argument, `<prog>: error: <message>` and exit status 2, not a
    traceback."""
    args = parser.parse_args(argv)
    try:
        return main(args)
    except CommandError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def architecture_of(modality: str) -> Callable[[str], str]:
    """An argparse type for --arch: a registered architecture of `modality`, checked before any
    data is prepared; any other name is refused with that modality's valid choices."""

    def architecture(name: str) -> str:
        try:
            check_architecture(name, modality)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return name

    return architecture


def zero_or_more(text: str) -> int:
    """An argparse type for --epochs and --threads, where 0 has a meaning of its own."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type for --heldout-fraction: a number strictly between 0 and 1."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_training_arguments(parser: argparse.ArgumentParser, model_name: str, *, epochs: int, batch_size: int,
                           lr: Optional[float], weight_decay: float, threads: int,
                           default_lr: Optional[str] = None) -> argparse.ArgumentParser:
    """The arguments that mean the same in every training script, with that script's defaults.
    `default_lr` describes a default that depends on other arguments (lr=None)."""
    parser.add_argument("--epochs", type=zero_or_more, default=epochs,
                        help=f"passes over the training data (default {epochs}); 0: export the initial weights from "
                             "--seed untrained, generating no data and reading --data only for its class names")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"training batch size (default {batch_size})")
    parser.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help="default adamw")
    parser.add_argument("--lr", type=float, default=lr,
                        help=f"peak learning rate of the one-cycle schedule (default {default_lr or lr})")
    parser.add_argument("--weight-decay", type=float, default=weight_decay, help=f"default {weight_decay}")
    parser.add_argument("--threads", type=zero_or_more, default=threads,
                        help=f"torch threads for training (default {threads}); 0: every core, or OMP_NUM_THREADS when set")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the generated data, the held-out split and the initial weights (default 0)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "exports" / model_name,
                        help=f"export directory, replaced whole (default exports/{model_name})")
    return parser


# ---- a user's data set ---------------------------------------------------------------------------
def check_labels(names: Sequence[str], data: Path, hint: str = "") -> None:
    """DataError unless the labels found in --data `data` make a classifier (2 or more)."""
    if len(names) < 2:
        raise DataError(f"--data {data}: a classifier needs at least 2 classes, found {len(names)}: {list(names)}{hint}")


def _is_hidden(path: Path, root: Path) -> bool:
    # .DS_Store, .git, editor swap files: not the user's data.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def class_folders(root: Path, suffixes: Optional[Collection[str]] = None,
                  min_files: int = 2) -> Tuple[List[str], List[List[Path]]]:
    """The classes of a folder data set, root/<class name>/<file>, and each class's files (sorted,
    subfolders included). Hidden folders and files are skipped. `suffixes` keeps only files with
    those endings (any case); None keeps every file, so that a stray one fails loudly when read
    rather than being skipped. DataError unless there are 2 classes or more, each of at least
    `min_files` files (2 to train: one to train on, one to evaluate; 1 to evaluate only): an empty
    class folder is reported, not ignored."""
    matching = f" ending in {', '.join(sorted(suffixes))}" if suffixes else ""
    layout = f"{root}/<class name>/<file>{matching}"
    if not root.is_dir():
        raise DataError(f"--data {root} is not a directory; expected {layout}")
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir() and not _is_hidden(path, root))
    check_labels([path.name for path in class_dirs], root, hint=f"; expected {layout}")
    files_per_class = []
    for class_dir in class_dirs:
        files = sorted(
            path for path in class_dir.rglob("*")
            if path.is_file() and not _is_hidden(path, class_dir)
            and (suffixes is None or path.suffix.lower() in suffixes)
        )
        if len(files) < min_files:
            why = " (one to train on, one to evaluate)" if min_files == 2 else ""
            raise DataError(f"class folder {class_dir} has {len(files)} file(s){matching}; each class needs at least "
                            f"{min_files}{why}")
        files_per_class.append(files)
    return [path.name for path in class_dirs], files_per_class


def split_off(items: Sequence[T], share: float, rng: random.Random) -> Tuple[List[T], List[T]]:
    """A shuffle of `items` with `rng` into (kept, held out): about `share` held out, at least one of each."""
    if len(items) < 2:
        raise ValueError(f"need at least 2 items to hold some out, got {len(items)}")
    shuffled = list(items)
    rng.shuffle(shuffled)
    cut = min(len(shuffled) - 1, max(1, round(len(shuffled) * share)))
    return shuffled[cut:], shuffled[:cut]


def heldout_split(items: Sequence[T], share: float, seed: int) -> Tuple[List[T], List[T]]:
    """(train, held out): a seeded random `share` of `items` held out, at least one of each."""
    return split_off(items, share, random.Random(seed))


def per_class_heldout_split(items_per_class: Sequence[Sequence[T]], share: float,
                            seed: int) -> Tuple[List[Tuple[T, int]], List[Tuple[T, int]]]:
    """(train, held out) lists of (item, class index): `share` of each class held out, so every class
    is both trained on and evaluated. Each class needs at least 2 items; its split is seeded by
    seed + class index."""
    train, heldout = [], []
    for label, items in enumerate(items_per_class):
        kept, held = heldout_split(items, share, seed + label)
        train += [(item, label) for item in kept]
        heldout += [(item, label) for item in held]
    return train, heldout


# ---- training ------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_all_cores() -> int:
    """Train on every core, unless OMP_NUM_THREADS says otherwise (e.g. beside other jobs)."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def use_threads(threads: int) -> int:
    """--threads: that many torch threads, or every core for 0 (use_all_cores). Returns the count."""
    if threads == 0:
        return use_all_cores()
    torch.set_num_threads(threads)
    return threads


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


def make_optimizer(name: str, parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """`parameters`: a model's parameters, or parameter groups each with its own "lr"."""
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")


def fit(model, train_loader, heldout_loader, *, epochs: int, lr: float, weight_decay: float,
        forward: Callable, optimizer: str = "adamw", label_smoothing: float = 0.0, log=print,
        parameter_groups: Optional[List[dict]] = None) -> dict:
    """Train with a one-cycle schedule; prints each epoch; returns the held-out accuracy and time.
    `parameter_groups` (each with its peak "lr"; a fine-tuning's, train/init_weights.py) replace the
    model's parameters at `lr`."""
    optimizer = make_optimizer(optimizer, parameter_groups or model.parameters(), lr, weight_decay)
    max_lr = [group["lr"] for group in parameter_groups] if parameter_groups else lr
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=epochs * len(train_loader), pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    started = time.perf_counter()
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        loss = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, forward)
        accuracy = evaluate(model, heldout_loader, forward)
        log(f"epoch {epoch}/{epochs}  loss {loss:.4f}  held-out accuracy {accuracy:.4f}  ({time.perf_counter() - started:.0f}s)")
    return {"heldout_accuracy": round(accuracy, 4), "train_seconds": round(time.perf_counter() - started, 1), "epochs": epochs}


# ---- what an export records ----------------------------------------------------------------------
def export_metrics(fitted: dict, *, train_examples: int, heldout_examples: int, data: str, started: float) -> dict:
    """The metrics every modality's model.json records: fit's, the data set's sizes and what it
    was, and the whole run's time since `started` (a time.perf_counter())."""
    return {**fitted, "train_examples": train_examples, "heldout_examples": heldout_examples, "data": data,
            "total_seconds": round(time.perf_counter() - started, 1)}


def untrained_metrics(seed: int, *, data: str, started: float, init_weights: Optional[str] = None) -> dict:
    """--epochs 0's metrics: the model as built from `seed` (the weights a training run with this seed
    starts from; with `init_weights`, those weights and a head from `seed` where it is new), exported
    without generating, reading or evaluating any example."""
    # No accuracy is claimed: a random model's is chance (1/classes), and measuring it would mean making
    # the held-out set --epochs 0 skips. null with the reason beside it, not a number read as a result.
    initial = f"--init-weights {init_weights}" if init_weights else f"seed {seed}"
    fitted = {"heldout_accuracy": None, "train_seconds": 0.0, "epochs": 0,
              "untrained": f"--epochs 0: initial weights from {initial}, not trained or evaluated"}
    return export_metrics(fitted, train_examples=0, heldout_examples=0, data=data, started=started)


def print_summary(metrics: dict, unit: str, out: Path, detail: str = "") -> None:
    if metrics["heldout_accuracy"] is None:
        print(f"{metrics['untrained']}; no held-out accuracy; {metrics['total_seconds']:.1f}s; export: {out}")
        return
    print(f"held-out accuracy: {metrics['heldout_accuracy']:.4f} on {metrics['heldout_examples']} {unit}{detail}; "
          f"trained in {metrics['train_seconds']:.1f}s ({metrics['total_seconds']:.1f}s in all); export: {out}")
