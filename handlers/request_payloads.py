"""A request's content as TorchServe's worker hands it over: a raw body, a multipart form field, or
base64 inside a JSON document. Decoding what the content means is the modality handler's job."""
import base64
import binascii
from typing import Any, Dict

from item_errors import ItemError, payload_too_large


def extract_payload(row: Dict[str, Any]):
    """The request's content as TorchServe's worker hands it over.

    A raw body arrives under "body", a multipart form field under its own name (usually "data"). The
    worker has already parsed application/json bodies into Python objects and decoded text/* bodies
    to str (falling back to bytes when they are not valid UTF-8); anything else is a bytearray.
    """
    for key in ("data", "body"):
        if key in row and row[key] is not None:
            return row[key]
    for value in row.values():  # a multipart upload under another field name, e.g. -F file=@x.jpg
        if value is not None:
            return value
    raise ItemError(400, "EmptyInput", "the request has no body and no form field")


def base64_field(document, fields) -> bytes:
    """Decode the base64 content of the first of `fields` present in a JSON document."""
    if not isinstance(document, dict):
        raise ItemError(400, "InvalidJSON", f"expected a JSON object with a {fields[0]!r} field")
    for name in fields:
        if name in document:
            value = document[name]
            break
    else:
        raise ItemError(400, "MissingField", f"the JSON object has no {' or '.join(map(repr, fields))} field")
    if not isinstance(value, str):
        raise ItemError(400, "InvalidJSON", f"field {name!r} must be a base64 string, not {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ItemError(400, "InvalidBase64", f"field {name!r} is not valid base64: {error}") from None


def binary_content(payload, json_fields, max_bytes: int, what: str) -> bytes:
    """Bytes of a binary upload (image, audio) from a raw body, a form field or base64 in JSON."""
    if isinstance(payload, (dict, list)):
        content = base64_field(payload, json_fields)
    elif isinstance(payload, str):
        # A text/* body: TorchServe decoded it, so it was text and not a file. Accept base64 text.
        try:
            content = base64.b64decode(payload.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ItemError(400, "InvalidInput", f"the body is text, not {what} bytes or base64") from None
    else:
        content = bytes(payload)
    if not content:
        raise ItemError(400, "EmptyInput", f"the {what} is empty (0 bytes)")
    if len(content) > max_bytes:
        raise payload_too_large(f"the {what}", len(content), max_bytes)
    return content
