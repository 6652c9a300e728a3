"""Train the text classifier and export it for serving.

    python -m train.text                              # demo: generated customer-support messages
    python -m train.text --data tickets.csv           # your data: CSV with columns text,label
    python -m train.text --data tickets.jsonl         # or JSON Lines: {"text": "...", "label": "..."}
    python -m train.text --arch text_transformer      # the small TransformerEncoder instead
    python -m train.text --epochs 0 --out DIR         # untrained: seeded initial weights, byte-level tokenizer
    python -m train.text --data tickets.csv --init-weights exports/text_classifier   # continue from an export

Trains a byte-level BPE tokenizer on the training texts, then the model, and writes
exports/text_classifier/ (weights.pt, model.json, index_to_name.json, tokenizer.json).

The demo data (train/synthetic_messages.py) holds some sentence templates of every intent out of
training: its held-out accuracy is measured on phrasings the model has never seen, not on
re-fillings of the ones it trained on. With --data, a seeded random fraction of the file is held
out instead.

--epochs 0 has no training texts to learn BPE merges from: its tokenizer is the byte alphabet alone,
and the model's vocabulary that size.

--init-weights starts from an export's weights (or a weights file's, with --tokenizer): the tokenizer is
then the one the weights were trained with, never a new one, since the embeddings are rows of its
vocabulary; from an export, its architecture, constructor arguments and preprocessing come too.
"""
import argparse
import csv
import json
import random
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from tokenizers import Tokenizer

from model_defs.export import write_export
from model_defs.registry import build_model
from model_defs.text import TOKENIZER_FILE, TextEncoder, find_pad_token, normalize_text, train_tokenizer
from train.common import (
    CommandError,
    DataError,
    add_training_arguments,
    architecture_of,
    check_labels,
    export_metrics,
    fit,
    fraction,
    heldout_split,
    print_summary,
    run,
    seed_everything,
    untrained_metrics,
    use_threads,
)
from train.init_weights import add_init_arguments, initial_weights, start_from
from train.synthetic_messages import INTENTS, generate_messages, split_templates

DEFAULT_ARCH = "text_embedding_bag"
DATA_SUFFIXES = {".csv": "CSV with a header row and columns text,label", ".jsonl": "JSON Lines", ".ndjson": "JSON Lines"}


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m train.text", description="Train the text classifier")
    parser.add_argument("--data", type=Path,
                        help="CSV (columns text,label) or JSON Lines ({\"text\": ..., \"label\": ...}); "
                             "default: generated customer-support messages")
    parser.add_argument("--arch", type=architecture_of("text"),
                        help=f"{DEFAULT_ARCH} (default: mean of token embeddings; or the --init-weights export's) "
                             "or text_transformer")
    parser.add_argument("--vocab-size", type=int, default=2000, help="BPE vocabulary size, special tokens included")
    parser.add_argument("--max-tokens", type=int, default=128, help="longer texts are truncated to this many tokens")
    parser.add_argument("--no-lowercase", dest="lowercase", action="store_false", help="keep case (default: case-fold)")
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2, help="encoder layers (text_transformer)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (text_transformer)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--token-dropout", type=float, default=0.1,
                        help="share of each training text's tokens dropped at random, so no single word decides")
    parser.add_argument("--train-per-intent", type=int, default=500,
                        help="generated training messages per intent (demo data only)")
    parser.add_argument("--heldout-per-intent", type=int, default=150,
                        help="generated held-out messages per intent (demo data only)")
    parser.add_argument("--heldout-fraction", type=fraction, default=0.2, help="share of --data held out for accuracy")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer.json to use instead of training one (required with "
                                                       "--init-weights of a weights file: the one it was trained with)")
    add_init_arguments(parser, "text")
    # One thread: these models are small enough that more threads mostly add synchronisation; on 2 busy
    # cores a training step took 2 ms with 1 thread, 20-45 ms with 2.
    return add_training_arguments(parser, "text_classifier", epochs=8, batch_size=64, lr=None, weight_decay=1e-4,
                                  threads=1, default_lr="2e-2 for text_embedding_bag, 5e-3 for text_transformer")


# ---- the data ---------------------------------------------------------------------------------
def demo_data(args):
    train_templates, heldout_templates = split_templates(args.seed)
    train = generate_messages(train_templates, args.train_per_intent, args.seed)
    heldout = generate_messages(heldout_templates, args.heldout_per_intent, args.seed + 1)
    return train, heldout, "generated support messages; held out: unseen templates"


def read_rows(path: Path):
    """(line number, record) pairs of a CSV or JSON Lines file; DataError naming the problem."""
    if not path.is_file():
        raise DataError(f"--data {path}: {'a directory' if path.is_dir() else 'no such file'}; "
                        f"expected a file ending in {', '.join(DATA_SUFFIXES)}")
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        choices = "; ".join(f"{s} ({what})" for s, what in DATA_SUFFIXES.items())
        raise DataError(f"--data {path}: unknown file type {suffix or '(none)'!r}; valid choices: {choices}")
    try:
        content = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports start with a BOM
    except UnicodeDecodeError as error:
        raise DataError(f"--data {path}: not UTF-8 text ({error})") from None
    if suffix == ".csv":
        reader = csv.DictReader(content.splitlines())
        missing = {"text", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"--data {path}: the header row needs columns text,label; missing "
                            f"{', '.join(sorted(missing))} (found: {', '.join(reader.fieldnames or []) or 'nothing'})")
        return [(reader.line_num, row) for row in reader]
    rows = []
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"--data {path}: line {line_number} is not valid JSON ({error})") from None
        if not isinstance(record, dict):
            raise DataError(f"--data {path}: line {line_number} is a JSON {type(record).__name__}, "
                            "expected an object like {\"text\": \"...\", \"label\": \"...\"}")
        rows.append((line_number, record))
    return rows


def read_labelled_texts(path: Path) -> Tuple[List[str], List[str]]:
    texts, labels = [], []
    for line_number, record in read_rows(path):
        text, label = record.get("text"), record.get("label")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"--data {path}: line {line_number}: \"text\" must be a non-empty string, got {text!r}")
        if isinstance(label, (int, float)) and not isinstance(label, bool):
            label = str(label)  # JSON Lines with numeric class ids
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"--data {path}: line {line_number}: \"label\" must be a non-empty string, got {label!r}")
        texts.append(text)
        labels.append(label.strip())
    check_labels(sorted(set(labels)), path)
    return texts, labels


def user_data(args):
    texts, labels = read_labelled_texts(args.data)
    train, heldout = heldout_split(list(zip(texts, labels)), args.heldout_fraction, args.seed)
    return unzip(train), unzip(heldout), f"{args.data}; held out: random {args.heldout_fraction:.0%}"


def unzip(examples: Sequence[Tuple[str, str]]) -> Tuple[List[str], List[str]]:
    """(text, label) pairs → (texts, labels)."""
    return [text for text, _ in examples], [label for _, label in examples]


# ---- batches ---------------------------------------------------------------------------------
class EncodedTextDataset(Dataset):
    """Texts encoded once, up front, through the serving encoder (the whole set in one batch call)."""

    def __init__(self, encoder: TextEncoder, texts: Sequence[str], targets: Sequence[int]):
        self.token_ids = encoder.encode_batch(texts).token_ids
        self.targets = list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.token_ids[index], self.targets[index]


class TokenBatchCollator:
    """Lists of (token ids, target) → (the model's keyword inputs, targets), as the handler batches them.

    With token_dropout > 0 (training only) each token is dropped with that probability, keeping at
    least one, so the model learns from every word of a message rather than its most telling one.
    """

    def __init__(self, model, token_dropout: float = 0.0, seed: int = 0):
        self.model, self.token_dropout, self.rng = model, token_dropout, random.Random(seed)

    def __call__(self, batch):
        token_ids, targets = zip(*batch)
        if self.token_dropout:
            token_ids = [self.drop_tokens(ids) for ids in token_ids]
        return self.model.batch_inputs(token_ids), torch.tensor(targets, dtype=torch.long)

    def drop_tokens(self, ids):
        kept = [token for token in ids if self.rng.random() >= self.token_dropout]
        return kept or [self.rng.choice(ids)]


def text_loader(model, encoder, texts, targets, batch_size, shuffle=False, token_dropout=0.0, seed=0):
    return DataLoader(EncodedTextDataset(encoder, texts, targets), batch_size=batch_size, shuffle=shuffle,
                      collate_fn=TokenBatchCollator(model, token_dropout, seed))


def text_batch(model, batch):
    """common.fit's forward: (logits, targets) for one batch."""
    inputs, targets = batch
    return model(**inputs), targets


# ---- main --------------------------------------------------------------------------------------
def model_args_for(args, vocab_size: int, num_classes: int, pad_id: int) -> dict:
    model_args = {"vocab_size": vocab_size, "embed_dim": args.embed_dim, "num_classes": num_classes,
                  "dropout": args.dropout}
    if args.arch == "text_transformer":
        model_args.update(max_tokens=args.max_tokens, pad_id=pad_id, num_heads=args.heads, num_layers=args.layers)
    return model_args


def text_initial_weights(args):
    """--init-weights resolved (None without it); a weights file needs the tokenizer it was trained with."""
    initial = initial_weights(args, "text", DEFAULT_ARCH)
    if initial is not None and initial.spec is not None and args.tokenizer is not None:
        raise CommandError(f"--tokenizer with --init-weights {args.init_weights}: an export's weights go with its own "
                           "tokenizer, which is used; leave --tokenizer out")
    if initial is not None and initial.spec is None and args.tokenizer is None:
        raise CommandError(f"--init-weights {args.init_weights} needs --tokenizer: the tokenizer.json the weights were "
                           "trained with (their embeddings are rows of its vocabulary)")
    return initial


def given_encoder(args, initial):
    """The encoder of --init-weights' export or of --tokenizer (args' max_tokens and lowercase set to
    what it uses, for model.json's record), or None when a tokenizer is to be trained."""
    if initial is not None and initial.spec is not None:
        encoder = TextEncoder.from_export(initial.directory, initial.spec["preprocess"])
        print(f"tokenizer and preprocessing from {initial.directory}: {encoder.preprocess_params()}")
    elif args.tokenizer is not None:
        try:
            tokenizer = Tokenizer.from_file(str(args.tokenizer))
            encoder = TextEncoder(tokenizer, args.max_tokens, args.lowercase, find_pad_token(tokenizer))
        except Exception as error:  # tokenizers raises its own Exception subclass for an unreadable file
            raise CommandError(f"--tokenizer {args.tokenizer}: {error}") from None
    else:
        return None
    args.max_tokens, args.lowercase = encoder.max_tokens, encoder.lowercase
    return encoder


def main(args):
    seed_everything(args.seed)
    threads = use_threads(args.threads)
    started = time.perf_counter()
    initial = text_initial_weights(args)
    if args.epochs == 0:  # the class names only: no message is generated, no text of --data is used
        train_texts, classes = [], sorted(set(read_labelled_texts(args.data)[1]) if args.data else INTENTS)
        data_description = str(args.data) if args.data else "generated support messages"
    else:
        (train_texts, train_labels), (heldout_texts, heldout_labels), data_description = (
            user_data(args) if args.data else demo_data(args)
        )
        classes = sorted(set(train_labels) | set(heldout_labels))

    encoder = given_encoder(args, initial)
    if encoder is None:
        # The tokenizer sees only the training texts: held-out words must be as new to it as to the model.
        tokenizer = train_tokenizer((normalize_text(text, args.lowercase) for text in train_texts), args.vocab_size)
        encoder = TextEncoder(tokenizer, args.max_tokens, args.lowercase)
    if initial is not None and initial.spec is not None:
        model_args = {**initial.spec["model_args"], "num_classes": len(classes)}
    else:
        model_args = model_args_for(args, encoder.vocab_size, len(classes), encoder.pad_id)
    model = build_model(args.arch, modality="text", **model_args)
    groups, extra_spec = None, None
    lr = args.lr or (5e-3 if args.arch == "text_transformer" else 2e-2)
    if initial is not None:
        groups, extra_spec = start_from(model, initial, args, modality="text", model_args=model_args,
                                        labels=classes, lr=lr)

    if args.epochs == 0:
        metrics = untrained_metrics(args.seed, data=data_description, started=started, init_weights=args.init_weights)
    else:
        class_index = {name: i for i, name in enumerate(classes)}
        train_loader = text_loader(model, encoder, train_texts, [class_index[label] for label in train_labels],
                                   args.batch_size, shuffle=True, token_dropout=args.token_dropout, seed=args.seed)
        heldout_loader = text_loader(model, encoder, heldout_texts, [class_index[label] for label in heldout_labels], 256)
        print(f"{len(classes)} classes, {len(train_texts)} training / {len(heldout_texts)} held-out texts, "
              f"vocabulary {encoder.vocab_size}, {threads} threads, data ready in {time.perf_counter() - started:.1f}s")
        fitted = fit(model, train_loader, heldout_loader, epochs=args.epochs, lr=lr, weight_decay=args.weight_decay,
                     optimizer=args.optimizer, forward=text_batch, label_smoothing=0.05, parameter_groups=groups)
        metrics = export_metrics(fitted, train_examples=len(train_texts), heldout_examples=len(heldout_texts),
                                 data=data_description, started=started)

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_path = Path(scratch) / TOKENIZER_FILE
        encoder.tokenizer.save(str(tokenizer_path))
        write_export(args.out, model, name="text_classifier", modality="text", arch=args.arch,
                     model_args=model_args, preprocess=encoder.preprocess_params(), labels=classes,
                     metrics=metrics, training_args=vars(args), extra_files={TOKENIZER_FILE: tokenizer_path},
                     packages=("torch", "tokenizers"), extra_spec=extra_spec)
    print_summary(metrics, "texts", args.out)
    return metrics


if __name__ == "__main__":
    run(main, get_args_parser())
