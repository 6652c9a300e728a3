"""model_defs/text.py on its own: normalisation, the tokenizer and encoder, and both architectures."""
import pytest
import torch
from tokenizers import Tokenizer, models

from model_defs.registry import build_model
from model_defs.text import (PAD_TOKEN, EmbeddingBagClassifier, TextEncoder, TransformerClassifier, normalize_text,
                             train_tokenizer)

CORPUS = [
    "my card was charged twice for order 12345",
    "where is my parcel, it has not arrived",
    "i want to return the jacket",
    "i can't log in, i forgot my password",
    "please cancel my subscription",
    "the app crashes when i open it",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([normalize_text(text) for text in CORPUS], vocab_size=300)


def test_normalize_text_folds_width_case_and_whitespace():
    assert normalize_text("  ＭＹ\tCard\u00a0was\n\nCHARGED  ") == "my card was charged"
    assert normalize_text("Straße", lowercase=True) == "strasse"  # case folding, not just lower()
    assert normalize_text("  Keep  Case ", lowercase=False) == "Keep Case"
    assert normalize_text(" \t\n\u3000 ") == ""


def test_pad_is_id_zero_and_nothing_is_unknown(tokenizer):
    encoder = TextEncoder(tokenizer, max_tokens=64)
    assert encoder.pad_id == 0
    # Never seen in training: emoji, accents, CJK, symbols. Byte-level BPE still encodes all of them.
    encoded = encoder.encode_batch(["😡 überweisung 请帮助 ¯\\_(ツ)_/¯"])
    assert len(encoded.token_ids[0]) > 0
    assert all(0 < token < encoder.vocab_size for token in encoded.token_ids[0])


@pytest.mark.parametrize("text", ["my card was charged twice!!", "Wo ist mein Päckchen? 📦📦", "order #00017 – 3×", "a",
                                  "ＦＵＬＬ width and\ttabs"])
def test_round_trip_restores_the_normalised_text(tokenizer, text):
    encoder = TextEncoder(tokenizer, max_tokens=256)
    token_ids = encoder.encode_batch([text]).token_ids[0]
    assert encoder.decode(token_ids) == normalize_text(text)


def test_digits_are_single_tokens(tokenizer):
    encoder = TextEncoder(tokenizer, max_tokens=64)
    pieces = [tokenizer.id_to_token(token) for token in encoder.encode_batch(["order 12345"]).token_ids[0]]
    assert pieces[-5:] == ["1", "2", "3", "4", "5"]


def test_encoder_truncates_and_reports_original_counts(tokenizer):
    encoder = TextEncoder(tokenizer, max_tokens=5)
    long_text = "please cancel my subscription " * 10
    encoded = encoder.encode_batch([long_text, "hi"])
    full = TextEncoder(tokenizer, max_tokens=10_000).encode_batch([long_text, "hi"])
    assert encoded.kept_lengths == [5, len(full.token_ids[1])]
    assert encoded.original_lengths == [len(full.token_ids[0]), len(full.token_ids[1])]
    assert encoded.original_lengths[0] > 5
    assert encoded.truncated == [True, False]
    assert encoded.token_ids[0] == full.token_ids[0][:5]  # the head is kept


def test_encoder_requires_the_pad_token():
    with pytest.raises(ValueError, match=PAD_TOKEN):
        TextEncoder(Tokenizer(models.BPE()), max_tokens=8)
    with pytest.raises(ValueError, match="max_tokens"):
        TextEncoder(train_tokenizer(["a b c"] * 3, vocab_size=280), max_tokens=0)


def test_embedding_bag_offsets_and_batch_independence():
    torch.manual_seed(0)
    model = build_model("text_embedding_bag", vocab_size=50, embed_dim=8, num_classes=3).eval()
    assert isinstance(model, EmbeddingBagClassifier)
    sequences = [[1, 2, 3], [4], [5, 6]]
    inputs = model.batch_inputs(sequences)
    assert inputs["token_ids"].tolist() == [1, 2, 3, 4, 5, 6]
    assert inputs["offsets"].tolist() == [0, 3, 4]
    batched = model(**inputs)
    alone = torch.cat([model(**model.batch_inputs([sequence])) for sequence in sequences])
    assert batched.shape == (3, 3)
    torch.testing.assert_close(batched, alone)


def test_transformer_masks_padding():
    torch.manual_seed(0)
    model = build_model("text_transformer", vocab_size=50, embed_dim=16, num_classes=4, max_tokens=12,
                        num_heads=2, num_layers=2).eval()
    assert isinstance(model, TransformerClassifier)
    short, long = [7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    inputs = model.batch_inputs([short, long])
    assert inputs["token_ids"].shape == (2, 10)
    assert inputs["padding_mask"][0].tolist() == [False] * 3 + [True] * 7
    assert not inputs["padding_mask"][1].any()
    with torch.inference_mode():
        batched = model(**inputs)
        alone = model(**model.batch_inputs([short]))
    # Padded to 10 beside a longer neighbour, or not padded at all: the same logits.
    torch.testing.assert_close(batched[0:1], alone, atol=1e-5, rtol=1e-5)


def test_transformer_refuses_more_tokens_than_its_positions():
    model = build_model("text_transformer", vocab_size=50, embed_dim=16, num_classes=4, max_tokens=4, num_heads=2)
    with pytest.raises(ValueError, match="at most 4"):
        model.batch_inputs([[1, 2, 3, 4, 5]])


@pytest.mark.parametrize("arch,model_args", [
    ("text_embedding_bag", {}),
    ("text_transformer", {"max_tokens": 12, "num_heads": 2, "num_layers": 2}),
])
def test_the_per_token_split_that_explanations_use_gives_the_same_logits(arch, model_args):
    torch.manual_seed(0)
    model = build_model(arch, modality="text", vocab_size=50, embed_dim=16, num_classes=4, **model_args).eval()
    for sequence in ([3, 1, 4, 1, 5, 9], [2]):
        with torch.no_grad():
            whole = model(**model.batch_inputs([sequence]))
            split = model.classify_token_embeddings(model.token_embeddings(torch.tensor([sequence])))
        torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("text", ["  Hi,  my CARD\twas ﬁne  ", "Straße 12 😡", "Hi,\u00a0there"])
def test_token_spans_point_into_the_text_as_sent(tokenizer, text):
    encoder = TextEncoder(tokenizer, max_tokens=64)
    located = encoder.token_spans(text)
    assert located.in_original
    assert located.token_ids == encoder.encode_batch([text]).token_ids[0]
    covered = {i for start, end in located.spans for i in range(start, end)}
    assert {i for i, character in enumerate(text) if not character.isspace()} <= covered
    assert all(not text[start:end].startswith(" ") for start, end in located.spans if end - start > 1)


def test_token_spans_stop_where_truncation_stops(tokenizer):
    encoder = TextEncoder(tokenizer, max_tokens=3)
    located = encoder.token_spans("please cancel my subscription")
    assert len(located.spans) == len(located.token_ids) == 3
