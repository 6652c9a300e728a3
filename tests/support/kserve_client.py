"""KServe's own Python client (kserve 0.21's InferenceRESTClient) as a subprocess of .venv-kserve, where
that SDK lives (its pins clash with .venv's): the KServe live tests send it calls and read its answers.

    .venv-kserve/bin/python -m tests.support.kserve_client < calls.json > answers.json

stdin: a JSON list of calls, run concurrently on one client per protocol, each
    {"call": "infer" | "explain" | "is_model_ready" | "is_server_ready", "protocol": "v1" | "v2",
     "base_url": ..., "model": ..., "body": ..., "headers": {...}}
where a v2 infer's body is a v2 request ({"id", "inputs": [...]}), sent as the client's InferRequest.
stdout: one JSON answer per call, in order: {"ok": true, "result": ...} (a v2 InferResponse as
{"id", "model_name", "outputs": [{"name", "shape", "datatype", "data"}]}) or {"ok": false, "status": <HTTP
status>, "error": <the client's message>}.
"""
import asyncio
import json
import sys

import httpx
from kserve.inference_client import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse


def infer_request(model: str, body: dict) -> InferRequest:
    inputs = [InferInput(name=tensor["name"], shape=tensor["shape"], datatype=tensor["datatype"], data=tensor["data"])
              for tensor in body["inputs"]]
    return InferRequest(model_name=model, infer_inputs=inputs, request_id=body.get("id"))


def plain(result):
    if isinstance(result, InferResponse):
        return {"id": result.id, "model_name": result.model_name,
                "outputs": [{"name": output.name, "shape": list(output.shape), "datatype": output.datatype,
                             "data": [value.decode() if isinstance(value, bytes) else value for value in output.data]}
                            for output in result.outputs]}
    return result


async def run(call: dict, clients: dict) -> dict:
    client = clients[call["protocol"]]
    headers = call.get("headers")
    try:
        if call["call"] == "infer":
            body = call["body"]
            data = infer_request(call["model"], body) if call["protocol"] == "v2" else body
            result = await client.infer(call["base_url"], data, model_name=call["model"], headers=headers)
        elif call["call"] == "explain":
            result = await client.explain(call["base_url"], call["model"], call["body"], headers=headers)
        elif call["call"] == "is_model_ready":
            result = await client.is_model_ready(call["base_url"], call["model"], headers=headers)
        elif call["call"] == "is_server_ready":
            result = await client.is_server_ready(call["base_url"], headers=headers)
        else:
            raise ValueError(f"unknown call {call['call']!r}")
    except httpx.HTTPStatusError as error:
        return {"ok": False, "status": error.response.status_code, "error": str(error)}
    return {"ok": True, "result": plain(result)}


async def main(calls: list) -> list:
    clients = {protocol: InferenceRESTClient(RESTConfig(protocol=protocol, timeout=120)) for protocol in ("v1", "v2")}
    try:
        return list(await asyncio.gather(*(run(call, clients) for call in calls)))
    finally:
        for client in clients.values():
            await client.close()


if __name__ == "__main__":
    json.dump(asyncio.run(main(json.load(sys.stdin))), sys.stdout)
