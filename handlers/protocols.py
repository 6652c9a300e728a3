"""KServe's v1 and v2 inference protocols, understood by the handler itself, one request at a time.

KServe's TorchServe runtime forwards its clients' JSON bodies to TorchServe unchanged:
    v1  {"instances": [<instance>, ...]}                                    → {"predictions": [...]}
        (on :explain, {"explanations": [...]})
    v2  {"id": "...", "inputs": [{"name", "shape": [n], "datatype": "BYTES", "data": [...]}]}
                                                                            → {"model_name", "id", "outputs": [...]}
TorchServe's own envelopes for these (TS_SERVICE_ENVELOPE=kserve|kservev2) read only the first request
of a batch and fail the rest ("number of batch response mismatched", pytorch/serve#2158, #1302).
Here every request of a batch is unwrapped on its own, each of its instances becomes one item of the
batch's forward pass (so batches stay batched), and each request is answered in its own protocol.

An instance is what the plain /predictions route takes as a JSON body or a string: for images and
audio {"data": "<base64>"} (v2: the base64 string), for text {"text": "..."} or the text itself.
A request with a bad instance is answered 400 in its protocol's error form, {"error": "..."}; the
other requests of the batch are served.

Which bodies are protocol requests. TorchServe's worker parses a body only when its Content-Type is
application/json (text/* it decodes to str, anything else stays bytes), and KServe's own front end
(kserve 0.13's Model.explain, what the runtime's wrapper inherits) posts to :explain with no
Content-Type at all. So:
  - an application/json body that is an object with "instances" (v1) or "inputs" (v2) is a protocol
    request on every route, /predictions and /explanations included;
  - on TorchServe's KServe routes (/v1/models/<m>:predict|:explain, /v2/models/<m>/infer|explain), a
    body of any other type except text/* that parses as a JSON object is read as that JSON, as if it
    were sent as application/json: a v1/v2 body is then a protocol request, whatever its Content-Type;
  - a text/* body is always plain text, on every route: `-H 'Content-Type: text/plain'` classifies
    the characters sent, even when they spell a v1 body;
  - on /predictions and /explanations, a body without a JSON Content-Type is the content itself (raw
    image, audio or UTF-8 text bytes), as before.
A raw image or audio body never parses as JSON, so for those the rule changes nothing but the
explain call; for text, it is the Content-Type that decides.

The base handler sees every request through this module, a plain /predictions request included (a
protocol of one instance, its row as it came): `unwrap` turns a request into its instances' rows,
`render` and `render_error` turn their results into the request's answer. It holds no protocol branch.
"""
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

PLAIN, V1, V2 = "plain", "v1", "v2"


@dataclass
class Request:
    """One request of a batch, as its protocol sees it."""
    protocol: str                    # PLAIN, V1 or V2
    rows: List[Dict[str, Any]]       # each instance as the worker's row of a plain request
    request_id: Optional[str] = None  # v2's "id", echoed in the answer

    def instance_error_message(self, number: int, message: str) -> str:
        """An instance's error as its request's: which instance, where a request has several."""
        return message if self.protocol == PLAIN else f"instance {number}: {message}"


class ProtocolError(ValueError):
    """The body claims a protocol (has "instances" or "inputs") but breaks it; the message says how."""

    def __init__(self, protocol: str, message: str):
        super().__init__(f"{protocol}: {message}")
        self.request = Request(protocol, [])  # no instances: answered in its protocol's error form


def _flatten(values) -> list:
    flat = []
    for value in values:
        flat.extend(_flatten(value) if isinstance(value, list) else [value])
    return flat


def _instance_rows(instances: List[Any]) -> List[Dict[str, Any]]:
    """Each instance as the worker's row of a plain request whose JSON body it is."""
    return [{"body": instance} for instance in instances]


# A JSON object's first byte, after any whitespace: what a body must start with to be worth parsing
# (a multi-megabyte image is never decoded as text to find out that it is not JSON).
JSON_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")


def on_kserve_route(headers: Dict[str, Any]) -> bool:
    """Whether TorchServe received the request on one of its KServe routes. Its frontend (0.12,
    InferenceRequestHandler) adds an `explain` header to the requests of /predictions, /explanations
    and the KServe routes, and a `url_path` header only to /predictions and /explanations: the
    worker sees no route otherwise."""
    return "explain" in headers and "url_path" not in headers


def _json_object(body) -> Optional[dict]:
    """`body` (bytes) parsed, when it is a JSON object (it starts with "{" and parses); None otherwise."""
    if not JSON_OBJECT_START.match(body):
        return None
    try:
        return json.loads(bytes(body))
    except ValueError:  # not UTF-8 or not JSON (UnicodeDecodeError is a ValueError)
        return None


def unwrap(row: Dict[str, Any], kserve_route: bool = False) -> Request:
    """The request's protocol and its instances' rows; a plain request is one instance, its own row.
    `kserve_route`: the request came on a KServe route (`on_kserve_route`), where an untyped JSON
    body is read as JSON (the module's docstring says why)."""
    body = row.get("body")
    if kserve_route and isinstance(body, (bytes, bytearray)):
        document = _json_object(body)
        if document is not None:
            body, row = document, {**row, "body": document}
    if isinstance(body, dict):
        if "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise ProtocolError(V1, '"instances" must be a non-empty list')
            return Request(V1, _instance_rows(instances))
        if "inputs" in body:
            return _unwrap_v2(body)
    return Request(PLAIN, [row])


def _unwrap_v2(body: dict) -> Request:
    inputs = body["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(V2, '"inputs" must be a list of one input tensor '
                            '{"name", "shape", "datatype": "BYTES", "data"}')
    tensor = inputs[0]
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
    if missing:
        raise ProtocolError(V2, f"the input tensor has no {', '.join(missing)}")
    if tensor["datatype"] != "BYTES":
        raise ProtocolError(V2, f"the input's datatype must be BYTES (base64 for images and audio, the text for "
                            f"text), got {tensor['datatype']!r}")
    data = _flatten(tensor["data"]) if isinstance(tensor["data"], list) else [tensor["data"]]
    shape = tensor["shape"]
    count = 1
    for size in shape if isinstance(shape, list) else [None]:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(V2, f"shape must be a list of sizes, got {shape!r}")
        count *= size
    if count != len(data) or not data:
        raise ProtocolError(V2, f"shape {shape} holds {count} elements but data has {len(data)}")
    if not all(isinstance(value, str) for value in data):
        raise ProtocolError(V2, "every BYTES element must be a string")
    request_id = body.get("id")
    return Request(V2, _instance_rows(data), None if request_id is None else str(request_id))


def render(request: Request, results: List[Any], model_name: str, request_id: str, explanations: bool) -> Any:
    """The protocol's answer to one request: one result (a {label: probability} prediction, or an
    explanation) per instance, in order. A plain request's answer is its one result, as it is."""
    if request.protocol == PLAIN:
        return results[0]
    if request.protocol == V1:
        return {"explanations" if explanations else "predictions": results}
    if explanations:
        outputs = [{"name": "explanations", "shape": [len(results)], "datatype": "BYTES",
                    "data": [json.dumps(result) for result in results]}]
    else:
        # Top-k as two tensors, row by row: the labels and their probabilities, highest first.
        k = min((len(result) for result in results), default=0)
        labels = [label for result in results for label in list(result)[:k]]
        probabilities = [probability for result in results for probability in list(result.values())[:k]]
        outputs = [
            {"name": "labels", "shape": [len(results), k], "datatype": "BYTES", "data": labels},
            {"name": "probabilities", "shape": [len(results), k], "datatype": "FP32", "data": probabilities},
        ]
    return {"model_name": model_name, "id": request.request_id or request_id, "outputs": outputs}


def render_error(request: Optional[Request], body: Dict[str, Any]) -> Dict[str, Any]:
    """A request's error body ({"code", "type", "message"}) in its protocol's form. KServe's is
    {"error": "..."}; this bundle's code and type stay beside it."""
    if request is None or request.protocol == PLAIN:
        return body
    return {"error": f"{body['type']}: {body['message']}", "code": body["code"], "type": body["type"]}
