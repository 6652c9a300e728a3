"""Text models and the inference-time text preprocessing.

`normalize_text` and `TextEncoder` (normalise → byte-level BPE → cut to `max_tokens`) are the one
definition of text preprocessing: train/text.py trains and evaluates through them and the handler
serves through them, so a served prediction equals the one measured at training time. Each model
turns token-id lists into its own input tensors (`model.batch_inputs`) and takes them as keyword
arguments, so callers never need to know which architecture they hold.

The tokenizer is a byte-level BPE: every string, emoji and typo included, encodes without an unknown
token, and a non-empty normalised string always encodes to at least one token.
"""
import itertools
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn

from .registry import register

TOKENIZER_FILE = "tokenizer.json"
PAD_TOKEN = "<pad>"  # id 0: the first special token the trainer adds
# The names Hugging Face tokenizers give their padding token, tried in order for a tokenizer not trained here.
PAD_TOKENS = (PAD_TOKEN, "[PAD]", "<|pad|>", "<|padding|>")


def find_pad_token(tokenizer: Tokenizer, named: Optional[str] = None) -> str:
    """The tokenizer's padding token: `named`, else the first of PAD_TOKENS it has; ValueError naming them."""
    candidates = [named] if named else PAD_TOKENS
    found = next((token for token in candidates if tokenizer.token_to_id(token) is not None), None)
    if found is None:
        raise ValueError(f"the tokenizer has no padding token {' or '.join(candidates)}: name the one it has")
    return found


def normalize_text(text: str, lowercase: bool = True) -> str:
    """Unicode NFKC (full-width and ligature forms fold to plain ones), optional case folding, and
    runs of whitespace (tabs, newlines, non-breaking spaces) collapsed to one space, ends stripped."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.casefold()
    return " ".join(text.split())


def normalize_with_origins(text: str, lowercase: bool = True) -> Tuple[str, List[int]]:
    """`normalize_text` character by character, with the index in `text` each output character came
    from, so a span of the normalised text maps back to the text as the user wrote it. Where NFKC
    composes across characters (combining accents), per-character normalisation differs from the
    whole-text one: callers compare the result with `normalize_text` before trusting the origins."""
    characters, origins = [], []
    for index, character in enumerate(text):
        piece = unicodedata.normalize("NFKC", character)
        for normalized in piece.casefold() if lowercase else piece:
            if not normalized.isspace():
                characters.append(normalized)
                origins.append(index)
            elif characters and characters[-1] != " ":
                characters.append(" ")
                origins.append(index)
    if characters and characters[-1] == " ":
        characters.pop()
        origins.pop()
    return "".join(characters), origins


@dataclass(frozen=True)
class TokenSpans:
    """One text's kept tokens with where each lies: in the text as sent when `in_original`, else (a
    text whose normalisation cannot be traced character by character) in `normalized`."""

    token_ids: List[int]
    spans: List[Tuple[int, int]]
    in_original: bool
    normalized: str


def train_tokenizer(normalized_texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on texts already passed through `normalize_text`.

    A space is put before the first word, so that "cancel" opening a message is the same token as
    "cancel" inside one. Digits are split one by one so that order numbers and amounts do not fill
    the vocabulary with numbers seen once. The byte alphabet is always included: nothing is unknown.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(normalized_texts, trainer=trainer)
    return tokenizer


@dataclass(frozen=True)
class EncodedTexts:
    """A batch of texts as token ids, each cut to the encoder's max_tokens (the head is kept)."""

    token_ids: List[List[int]]
    original_lengths: List[int]  # token counts before truncation

    @property
    def kept_lengths(self) -> List[int]:
        return [len(ids) for ids in self.token_ids]

    @property
    def truncated(self) -> List[bool]:
        return [kept < original for kept, original in zip(self.kept_lengths, self.original_lengths)]


class TextEncoder:
    """normalize_text, then the trained tokenizer on the whole batch at once, then truncation."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, lowercase: bool = True, pad_token: str = PAD_TOKEN):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no {pad_token!r} token; train it with train_tokenizer()")
        self.tokenizer = tokenizer
        self.max_tokens = int(max_tokens)
        self.lowercase = bool(lowercase)
        self.pad_token = pad_token  # another name than <pad>: an imported tokenizer's ([PAD] ...)
        self.pad_id = pad_id

    @classmethod
    def from_export(cls, directory, preprocess: dict) -> "TextEncoder":
        """The encoder an export describes: its tokenizer.json and model.json's preprocess section."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a text export carries its tokenizer")
        return cls(Tokenizer.from_file(str(path)), preprocess["max_tokens"], preprocess["lowercase"],
                   preprocess.get("pad_token", PAD_TOKEN))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def preprocess_params(self) -> dict:
        """What model.json records so that `from_export` rebuilds this encoder (the pad token only when
        it is not <pad>, which every export before it had)."""
        params = {"max_tokens": self.max_tokens, "lowercase": self.lowercase}
        return params if self.pad_token == PAD_TOKEN else {**params, "pad_token": self.pad_token}

    def normalize(self, text: str) -> str:
        return normalize_text(text, self.lowercase)

    def encode_batch(self, texts: Sequence[str]) -> EncodedTexts:
        # Encoding in full and then slicing costs little at the handler's byte limit, and gives the
        # exact original token count that the truncation header reports.
        encodings = self.tokenizer.encode_batch([self.normalize(text) for text in texts], add_special_tokens=False)
        return EncodedTexts(
            token_ids=[encoding.ids[: self.max_tokens] for encoding in encodings],
            original_lengths=[len(encoding.ids) for encoding in encodings],
        )

    def token_spans(self, text: str) -> TokenSpans:
        """The tokens `encode_batch` gives `text` (truncated alike), each with its character span, for
        highlighting words in a user interface. A span excludes the space the token starts with."""
        normalized = self.normalize(text)
        traced, origins = normalize_with_origins(text, self.lowercase)
        encoding = self.tokenizer.encode(normalized, add_special_tokens=False)
        spans = []
        for start, end in encoding.offsets[: self.max_tokens]:
            while start < end - 1 and normalized[start].isspace():
                start += 1
            spans.append((start, end))
        in_original = traced == normalized
        if in_original:
            spans = [(origins[start], origins[end - 1] + 1) if end > start else (origins[start], origins[start])
                     for start, end in spans]
        return TokenSpans(encoding.ids[: self.max_tokens], spans, in_original, normalized)

    def decode(self, token_ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        # The space the pre-tokenizer put before the first word; normalised text never starts with one.
        return text[1:] if text.startswith(" ") else text


@register("text_embedding_bag")
class EmbeddingBagClassifier(nn.Module):
    """fastText-style: the mean of the tokens' embeddings, then a linear layer.

    The batch is one flat id tensor plus each text's start offset, so no compute goes to padding.
    """

    max_tokens: Optional[int] = None  # any length works

    def __init__(self, vocab_size: int, embed_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean")
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.embedding.weight, std=embed_dim ** -0.5)

    @staticmethod
    def batch_inputs(token_ids: Sequence[Sequence[int]]) -> Dict[str, torch.Tensor]:
        lengths = [len(ids) for ids in token_ids]
        return {
            "token_ids": torch.tensor(list(itertools.chain.from_iterable(token_ids)), dtype=torch.long),
            "offsets": torch.tensor([0, *itertools.accumulate(lengths)][:-1], dtype=torch.long),
        }

    def forward(self, token_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embedding(token_ids, offsets)))

    # Explanations attribute each token's embedding before the mean pools them: the same model, split
    # where the tokens are still apart (a unit test checks it matches forward).
    def token_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[texts, tokens] → [texts, tokens, embed_dim]"""
        return F.embedding(token_ids, self.embedding.weight)

    def classify_token_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[texts, tokens, embed_dim] of unpadded texts → logits"""
        return self.classifier(self.dropout(embeddings.mean(dim=1)))


@register("text_transformer")
class TransformerClassifier(nn.Module):
    """A small pre-norm TransformerEncoder over token + learned position embeddings, mean-pooled
    over the real tokens. Batches are padded to their longest text and padding is masked out of
    both attention and pooling, so a text's prediction does not depend on its batch neighbours."""

    def __init__(self, vocab_size: int, embed_dim: int, num_classes: int, max_tokens: int, pad_id: int = 0,
                 num_heads: int = 4, num_layers: int = 2, ff_dim: Optional[int] = None, dropout: float = 0.1):
        super().__init__()
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.token_embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.position_embedding = nn.Embedding(max_tokens, embed_dim)
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, ff_dim or 4 * embed_dim, dropout, activation="gelu", batch_first=True, norm_first=True,
        )
        # Nested tensors are not used with norm_first layers anyway; saying so avoids torch's warning.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def batch_inputs(self, token_ids: Sequence[Sequence[int]]) -> Dict[str, torch.Tensor]:
        longest = max(len(ids) for ids in token_ids)
        if longest > self.max_tokens:
            raise ValueError(f"a text has {longest} tokens; this model takes at most {self.max_tokens}")
        padded = torch.full((len(token_ids), max(longest, 1)), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(token_ids):
            padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        lengths = torch.tensor([len(ids) for ids in token_ids])
        return {"token_ids": padded, "padding_mask": torch.arange(padded.shape[1]) >= lengths[:, None]}

    def forward(self, token_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.classify_token_embeddings(self.token_embeddings(token_ids), padding_mask)

    # Split where the tokens are still apart, so that explanations attribute each token's embedding.
    def token_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[texts, tokens] → [texts, tokens, embed_dim]"""
        return self.token_embedding(token_ids)

    def classify_token_embeddings(self, embeddings: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[texts, tokens, embed_dim] → logits; no padding_mask: every token is real."""
        if padding_mask is None:
            padding_mask = torch.zeros(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
        positions = torch.arange(embeddings.shape[1], device=embeddings.device)
        hidden = embeddings + self.position_embedding(positions)
        hidden = self.norm(self.encoder(hidden, src_key_padding_mask=padding_mask))
        keep = (~padding_mask).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.classifier(pooled)

