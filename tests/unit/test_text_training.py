"""train/text.py and train/synthetic_messages.py: the generated data set and its held-out split,
reading a user's --data file, and a small end-to-end training run whose export the handler serves."""
import csv
import json
import random
import re
import subprocess
import sys

import pytest

from export_paths import REPO_ROOT
from tests.support.harness import load_handler, run_batch, worker_row
from model_defs.export import load_export
from model_defs.text import TOKENIZER_FILE
from train import synthetic_messages as messages
from train import text as train_text
from train.common import DataError


def parse(*argv):
    return train_text.get_args_parser().parse_args(list(argv))


# ---- generated data -----------------------------------------------------------------------------
def test_heldout_templates_are_unseen_in_training():
    train, heldout = messages.split_templates(seed=0)
    assert set(train) == set(heldout) == set(messages.INTENTS)
    assert len(train) >= 6
    for intent in messages.INTENTS:
        assert heldout[intent] and train[intent]
        assert not set(train[intent]) & set(heldout[intent])
        # Every intent keeps some of its own phrasings out of training, not only shared frames.
        assert set(heldout[intent]) & set(messages.INTENTS[intent]["templates"])


def test_split_and_messages_are_seeded():
    assert messages.split_templates(3) == messages.split_templates(3)
    assert messages.split_templates(3) != messages.split_templates(4)
    templates, _ = messages.split_templates(0)
    assert messages.generate_messages(templates, 5, seed=1) == messages.generate_messages(templates, 5, seed=1)
    assert messages.generate_messages(templates, 5, seed=1) != messages.generate_messages(templates, 5, seed=2)


def test_every_template_fills_completely():
    for intent, spec in messages.INTENTS.items():
        for template in messages.SHARED_TEMPLATES + spec["templates"]:
            for seed in range(5):
                text = messages.fill_template(template, intent, random.Random(seed))
                assert "{" not in text and "}" not in text, (intent, template, text)


def test_generated_messages_vary_like_real_ones():
    templates, _ = messages.split_templates(0)
    texts, labels = messages.generate_messages(templates, 300, seed=0)
    assert len(texts) == 300 * len(messages.INTENTS) and set(labels) == set(messages.INTENTS)
    assert len(set(texts)) > 0.95 * len(texts)
    share = lambda predicate: sum(map(predicate, texts)) / len(texts)  # noqa: E731
    assert share(lambda t: any(ord(c) > 0x2000 for c in t)) > 0.1          # emoji
    assert share(lambda t: re.search(r"\d", t) is not None) > 0.1           # order numbers, amounts, dates
    assert share(lambda t: t.isupper()) > 0.03                              # shouting
    assert share(lambda t: t[:1].isupper()) > 0.3                           # sentence case
    assert share(lambda t: t.rstrip().endswith(("?", "!", "."))) > 0.3      # punctuation
    assert share(lambda t: t.lower().startswith(("hi", "hello", "hey", "dear", "good"))) > 0.1  # politeness
    generated_words = {word for text in texts for word in words(text)}
    assert generated_words - spelled_words(), "typos make words that no template spells"


def words(text: str):
    return re.findall(r"[a-z]+", text.lower())


def spelled_words() -> set:
    """Every word the generator's templates, phrases and asides spell correctly."""
    sources = [*messages.SHARED_TEMPLATES, *messages.OPENERS, *messages.CLOSERS, *messages.ASIDES]
    sources += [value for values in messages.SLOTS.values() for value in values]
    sources += [value for spec in messages.INTENTS.values() for values in spec.values() for value in values]
    return {word for source in sources for word in words(source)}


# ---- the user's data ----------------------------------------------------------------------------
def test_reads_csv_with_bom_and_quoted_commas(tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_text('\ufefftext,label\n"charged twice, help",billing\nwhere is it,shipping\n', encoding="utf-8")
    assert train_text.read_labelled_texts(path) == (["charged twice, help", "where is it"], ["billing", "shipping"])


def test_reads_json_lines_with_numeric_labels_and_blank_lines(tmp_path):
    path = tmp_path / "tickets.jsonl"
    path.write_text('{"text": "charged twice", "label": 1}\n\n{"text": "where is it", "label": " shipping "}\n')
    assert train_text.read_labelled_texts(path) == (["charged twice", "where is it"], ["1", "shipping"])


@pytest.mark.parametrize("name, content, message", [
    ("missing.csv", None, "no such file"),
    ("tickets.txt", "hello", "unknown file type '.txt'; valid choices: .csv"),
    ("tickets.csv", "message,intent\nhi,a\n", "missing label, text (found: message, intent)"),
    ("tickets.csv", "text,label\nhi,a\n,b\n", "line 3: \"text\" must be a non-empty string"),
    ("tickets.csv", "text,label\nhi,\n", "line 2: \"label\" must be a non-empty string"),
    ("tickets.csv", "text,label\nhi,a\nyo,a\n", "a classifier needs at least 2 classes, found 1: ['a']"),
    ("tickets.jsonl", '{"text": "hi", "label": "a"}\n{"text": "yo", "label": "b"\n', "line 2 is not valid JSON"),
    ("tickets.jsonl", '["hi", "a"]\n', "line 1 is a JSON list, expected an object"),
    ("tickets.jsonl", '{"text": 5, "label": "a"}\n', "line 1: \"text\" must be a non-empty string, got 5"),
    ("tickets.jsonl", '{"text": "hi"}\n', "line 1: \"label\" must be a non-empty string, got None"),
    ("tickets.csv", b"text,label\ncaf\xe9,a\n", "not UTF-8 text"),
])
def test_bad_data_files_are_named_with_their_problem(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as raised:
        train_text.read_labelled_texts(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_training_text_imports_no_image_or_audio_code():
    # A text model needs neither torchvision nor torchaudio: building it by modality imports only its own.
    code = ("import sys; from train import text; "
            "text.build_model(text.DEFAULT_ARCH, modality='text', vocab_size=10, embed_dim=4, num_classes=2); "
            "print(sorted(m for m in ('torchvision', 'torchaudio', 'model_defs.image', 'model_defs.audio') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- end to end on a user's file ----------------------------------------------------------------
@pytest.fixture(scope="module")
def user_csv(tmp_path_factory):
    """A small labelled CSV written from the generator, standing in for a user's own data."""
    templates, _ = messages.split_templates(0)
    texts, labels = messages.generate_messages({i: templates[i] for i in ("billing", "login", "shipping")}, 60, seed=5)
    path = tmp_path_factory.mktemp("data") / "tickets.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    return path


@pytest.mark.parametrize("arch", ["text_embedding_bag", "text_transformer"])
def test_training_on_user_data_exports_what_the_handler_serves(tmp_path, user_csv, arch, restore_torch_threads):
    out = tmp_path / "export"
    metrics = train_text.main(parse("--data", str(user_csv), "--arch", arch, "--epochs", "3", "--max-tokens", "48",
                                    "--vocab-size", "400", "--embed-dim", "32", "--out", str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["index_to_name.json", "model.json", TOKENIZER_FILE, "weights.pt"]
    spec = json.loads((out / "model.json").read_text())
    assert spec["arch"] == arch and spec["preprocess"] == {"max_tokens": 48, "lowercase": True}
    assert spec["metrics"]["data"].startswith(str(user_csv)) and spec["metrics"]["heldout_examples"] == 36
    assert spec["training"]["data"] == str(user_csv) and spec["training"]["arch"] == arch
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0
    assert json.loads((out / "index_to_name.json").read_text()) == {"0": "billing", "1": "login", "2": "shipping"}

    export = load_export(out)
    assert not export.model.training
    handler, context = load_handler("text_classifier_handler", out, "text_classifier", tmp_dir=tmp_path / "served")
    long_text = "my card was charged twice " * 30
    responses = run_batch(handler, context, [worker_row("i forgot my password", "text/plain"),
                                             worker_row(long_text, "text/plain")])
    assert [response.status for response in responses] == [200, 200]
    assert set(responses[0].body) == {"billing", "login", "shipping"}
    assert responses[1].headers["X-Text-Tokens"].startswith("48/")
