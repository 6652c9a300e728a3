"""Tracing a request by its ID: the client's own `X-Request-ID`, or TorchServe's when it sent none.

TorchServe 0.12's frontend gives every request an ID of its own (a UUID), hands it to the worker
(`context.request_ids`) and answers it in the response's `X-Request-ID` header, overwriting whatever
a handler set under that name (NettyUtils.sendHttpResponse: read in its source, and seen on a live
server). A client's own ID therefore cannot come back as `X-Request-ID`. The handlers echo it as
`X-Client-Request-ID` instead, on every answer they give (predictions, explanations, per-item errors),
and name both IDs in the log line of a request that failed. With no ID sent, TorchServe's is the one
to quote: it is in the response's `X-Request-ID` and in the log line.

KServe forwards its client's `x-request-id` to TorchServe's :predict and /infer routes (kserve 0.13's
Model._http_predict; Istio's sidecar sets one on every request), so through KServe the log line
carries the ID the mesh traced the request by. KServe's front end returns none of TorchServe's
response headers to its client, and sends no headers with :explain.
"""
import re
from typing import Any, Dict, Optional

CLIENT_HEADER = "x-request-id"           # what the client sends (header names are case-insensitive)
ECHO_HEADER = "X-Client-Request-ID"      # what the handler answers it in
# An ID is echoed into a response header and written into a log line: only short, printable ASCII
# qualifies (a longer or binary value is ignored, and the request is traced by TorchServe's ID).
VALID_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")


def client_request_id(headers: Dict[str, Any]) -> Optional[str]:
    """The request's own `X-Request-ID`, whatever its case, when it is a usable ID; None otherwise."""
    for name, value in headers.items():
        if isinstance(value, str) and name.lower() == CLIENT_HEADER:
            return value if VALID_ID.fullmatch(value) else None
    return None


def log_label(client_id: Optional[str], torchserve_id: Optional[str]) -> str:
    """Both IDs of a request, as a log line names them: grep for either."""
    if client_id is None:
        return f"request {torchserve_id}"
    return f"request {client_id} (TorchServe's {torchserve_id})"
