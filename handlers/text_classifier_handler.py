"""TorchServe handler for the text classifier (model `text_classifier`).

A request carries one text, sent in any of these ways:
    text/plain (any text/*) body      curl -H 'Content-Type: text/plain' -d 'my card was charged twice'
    JSON object with a "text" field   curl -H 'Content-Type: application/json' -d '{"text": "..."}'
    form field named text or data     curl -F text='...'   or   curl --data-urlencode text='...'
    raw UTF-8 bytes                   curl -H 'Content-Type: application/octet-stream' --data-binary @msg.txt

The whole batch is normalised and tokenized in one call and classified in one forward pass. Every
answer is {intent: probability} for the top-k intents, highest first. Texts over the model's
max_tokens are truncated to their first max_tokens tokens; every answer says so in its headers:
    X-Text-Tokens: <tokens kept>/<tokens in the text>      X-Text-Truncated: true | false

A request that is not usable text gets a 4xx answer with a JSON body naming the problem, and the
rest of its batch is still served: invalid UTF-8, an empty or whitespace-only text, invalid JSON,
a JSON body that is not an object with a string "text", no text field at all, and a text over the
handler's max_bytes (413).

Explanations (/explanations/text_classifier) attribute each kept token's embedding, before the model
pools them, against zero embeddings, and answer one value per token with the token's characters
and their start/end offsets in the text as sent, ready to highlight words in a user interface.
"""
import json
import os
from typing import Any, Dict, List, Tuple

import torch

from explanations import AttributionInput
from batch_handler import BatchClassifierHandler, HandlerSettings
from handler_settings import setting
from item_errors import ItemError, payload_too_large
from model_defs.text import EncodedTexts, TextEncoder

TEXT_FIELDS = ("body", "text", "data")  # where the text may be: the raw body, or a form field
JSON_MEDIA_TYPE = "application/json"
FORM_URLENCODED = "application/x-www-form-urlencoded"
TOKENS_HEADER = "X-Text-Tokens"
TRUNCATED_HEADER = "X-Text-Truncated"

# TorchServe's loader refuses a handler module that defines more than one class, so a collated
# batch travels as a plain tuple: (the texts as sent, the EncodedTexts, the keyword tensors the model
# takes: offsets, or padding + mask).
TextBatch = Tuple[List[str], EncodedTexts, Dict[str, Any]]

JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
                   type(None): "null"}


TextSettings = HandlerSettings.extend(
    "TextSettings",
    # Largest text, in UTF-8 bytes: a support message is far shorter, and tokenizing a whole 64 KiB
    # text (to report its token count) stays a few milliseconds.
    max_bytes=setting(64 * 1024, minimum=1),
)


def json_type_name(value) -> str:
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def decode_utf8(content: bytes) -> str:
    try:
        return bytes(content).decode("utf-8")
    except UnicodeDecodeError as error:
        bad = content[error.start]
        raise ItemError(400, "InvalidUTF8",
                        f"the text is not valid UTF-8: byte 0x{bad:02x} at offset {error.start} ({error.reason})") from None


def missing_text_error(fields: Dict[str, Any], media_type: str) -> ItemError:
    present = ", ".join(sorted(fields)[:10])
    if media_type == FORM_URLENCODED:
        # curl -d sends this media type; TorchServe splits such a body into name=value fields and
        # drops text without "=", so the text never reaches the handler.
        found = f"found fields: {present}" if present else "found no field"
        message = (f"the body is sent as {FORM_URLENCODED} (curl -d's default) and TorchServe parses it as a "
                   f"form ({found}); send the text with -H 'Content-Type: text/plain', as JSON "
                   '{"text": "..."}, or as a form field: --data-urlencode text=...')
    elif present:
        message = f"no text: the request has no body and no form field named text or data (it has: {present})"
    else:
        message = "no text: the request has no body and no form field"
    return ItemError(400, "MissingText", message)


def text_headers(kept_tokens: int, original_tokens: int) -> Dict[str, str]:
    return {TOKENS_HEADER: f"{kept_tokens}/{original_tokens}",
            TRUNCATED_HEADER: "true" if kept_tokens < original_tokens else "false"}


class TextClassifierHandler(BatchClassifierHandler):
    """Settings: TextSettings (model-config `handler:`). max_tokens and lowercasing come from the export."""

    modality = "text"
    settings_class = TextSettings
    json_fields = ("text",)

    def load_modality(self, export) -> None:
        # tokenizers encodes a batch on a Rayon thread pool sized to every core; give it this worker's
        # share, as torch has. Rayon reads this once, when the pool first starts (at the first batch).
        os.environ.setdefault("RAYON_NUM_THREADS", str(self.threads))
        self.encoder = TextEncoder.from_export(export.directory, self.spec["preprocess"])
        model_limit = getattr(self.model, "max_tokens", None)
        if model_limit is not None and self.encoder.max_tokens > model_limit:
            raise ValueError(f"model.json: preprocess.max_tokens is {self.encoder.max_tokens} but the "
                             f"{self.spec['arch']} model takes at most {model_limit} tokens")

    # ---- batch flow -----------------------------------------------------------------------------
    def item_from_row(self, row, index: int):
        # The text may be the body or a form field, and the Content-Type tells a JSON body that failed
        # to parse, or a urlencoded body TorchServe emptied, from plain text: so the whole row is read.
        text = self.request_text(dict(row), self.request_media_type(index))
        # The encoder's own normalisation decides emptiness: whatever survives it encodes to at least
        # one token (byte-level BPE), so the model never sees an empty sequence.
        if not self.encoder.normalize(text):
            raise ItemError(400, "EmptyInput", "the text is empty or only whitespace")
        return text, {}

    def collate(self, texts: List[str]) -> TextBatch:
        encoded = self.encoder.encode_batch(texts)
        return texts, encoded, self.model.batch_inputs(encoded.token_ids)

    def batch_headers(self, batch: TextBatch) -> List[Dict[str, str]]:
        # Token counts exist only once the whole batch is encoded.
        _, encoded, _ = batch
        return [text_headers(kept, original) for kept, original in zip(encoded.kept_lengths, encoded.original_lengths)]

    def forward(self, batch: TextBatch):
        _, _, model_inputs = batch
        return self.model(**{name: tensor.to(self.device, non_blocking=True) for name, tensor in model_inputs.items()})

    # ---- explanations: one attribution per token, before any pooling ----------------------------
    def attribution_input(self, batch, position):
        _, encoded, _ = batch.inputs
        token_ids = torch.tensor([encoded.token_ids[position]], dtype=torch.long, device=self.device)
        with torch.no_grad():
            embeddings = self.model.token_embeddings(token_ids)
        # Zero embeddings: every token's evidence removed, the text's length kept.
        return AttributionInput(embeddings, torch.zeros_like(embeddings), self.model.classify_token_embeddings)

    def explanation_fields(self, attributions, source, batch, position, options):
        texts, encoded, _ = batch.inputs
        located = self.encoder.token_spans(texts[position])
        if located.token_ids != encoded.token_ids[position]:
            raise RuntimeError("the tokens located for the explanation differ from the ones classified")
        text = texts[position] if located.in_original else located.normalized
        per_token = attributions[0].sum(dim=-1).tolist()
        fields = {
            "tokens": [{"token": text[start:end], "start": start, "end": end, "attribution": round(value, 6)}
                       for (start, end), value in zip(located.spans, per_token)],
            # Spans index the text as sent; for the rare text whose Unicode normalisation cannot be
            # traced character by character, they index the normalised text, given here.
            "offsets_in": "text" if located.in_original else "normalized_text",
        }
        if not located.in_original:
            fields["normalized_text"] = located.normalized
        return fields

    # ---- one request's text ---------------------------------------------------------------------
    def request_media_type(self, index: int) -> str:
        """The request's Content-Type without parameters, lower-case; "" when the worker gave none."""
        for name, value in self.request_headers(index).items():
            # Field names map to dicts of their own headers; the HTTP headers are the strings.
            if isinstance(value, str) and name.lower() == "content-type":
                return value.split(";", 1)[0].strip().lower()
        return ""

    def request_text(self, fields: Dict[str, Any], media_type: str) -> str:
        field = next((name for name in TEXT_FIELDS if fields.get(name) is not None), None)
        if field is None:
            raise missing_text_error(fields, media_type)
        value = fields[field]
        if isinstance(value, (bytes, bytearray)):
            if not value:
                what = "the body" if field == "body" else f"form field {field!r}"
                raise ItemError(400, "EmptyInput", f"{what} is empty")
            if field == "body" and media_type == JSON_MEDIA_TYPE:
                # The worker hands over a JSON body it could not parse (or did not, with
                # TS_DECODE_INPUT_REQUEST=false) as bytes: parse it here, to say why or to use it.
                # Its "text" is size-checked below, as when the worker parsed it.
                try:
                    value = json.loads(bytes(value))
                except ValueError as error:
                    raise ItemError(400, "InvalidJSON",
                                    f"the body is sent as {JSON_MEDIA_TYPE} but is not valid JSON: {error}") from None
            else:
                self.check_size(len(value))  # before decoding: an oversized body is never decoded
                return decode_utf8(value)
        if isinstance(value, dict):
            return self.json_text(value)
        if isinstance(value, str):  # a text/* body the worker decoded, or a JSON string document
            return self.checked_text(value)
        raise ItemError(400, "InvalidJSON",
                        f'expected a JSON object like {{"text": "..."}}, got a JSON {json_type_name(value)}')

    def json_text(self, document: dict) -> str:
        (field,) = self.json_fields
        if field not in document:
            fields = ", ".join(sorted(map(str, document))[:10])
            has = f" (it has: {fields})" if fields else ""
            raise ItemError(400, "MissingField", f'the JSON object has no "{field}" field{has}')
        text = document[field]
        if not isinstance(text, str):
            raise ItemError(400, "InvalidJSON", f'the "text" field must be a string, not a JSON {json_type_name(text)}')
        return self.checked_text(text)

    def checked_text(self, text: str) -> str:
        """`text` if it is valid Unicode within max_bytes. JSON can carry lone surrogates ("\\ud800"),
        which no encoder accepts: caught here, they cannot fail the whole batch in collate()."""
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise ItemError(400, "InvalidText", f"the text is not valid Unicode: {error.reason} "
                                                f"(U+{ord(text[error.start]):04X} at character {error.start})") from None
        self.check_size(size)
        return text

    def check_size(self, size: int) -> None:
        if size > self.settings.max_bytes:
            raise payload_too_large("the text", size, self.settings.max_bytes)
