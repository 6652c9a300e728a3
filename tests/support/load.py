"""HTTP load on a TorchServe over loopback: the one load generator of the benchmark, the soak and the
live tests.

asyncio + aiohttp with keep-alive connections: one event loop reaches several thousand requests per
second against TorchServe's /ping on this machine's cores, where 16 threads of `requests` stop near
900, below what the text model serves (the benchmark reports the client's ceiling, so a figure near
it says the client, not the model, was the limit).

- `closed_loop`: N clients, each sending its next request as soon as its last is answered;
- `burst`: N requests at once, each on its own connection;
- `open_loop`: requests due at fixed rates, several streams at once, whether or not earlier ones
  were answered (as real users arrive);
- `SteadyLoad`: a closed loop in the background, started before and stopped after a fault;
- `send`: one request.

Every run stops by itself, at a request count or a deadline, and every request has a client timeout,
so a request that is never answered is recorded ("no answer"), not waited on. Each returns one
`Outcome` per request, and `summary` is the one report of any list of them.
"""
import asyncio
import json
import math
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import aiohttp

from scripts import samples
from scripts.local_torchserve import bearer
from scripts.model_store import ModelKind

NO_ANSWER = None  # Outcome.status of a request that got no HTTP answer within its timeout
CONTENT_TYPES = {"text": "text/plain", "image": "application/octet-stream", "audio": "application/octet-stream"}


@dataclass(frozen=True)
class Payload:
    body: bytes
    headers: Dict[str, str]


@dataclass(frozen=True)
class Request:
    """One HTTP request the generator sends, again and again: a POST of `body`, or a GET when it is None."""
    url: str
    body: Optional[bytes] = None
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str = ""  # copied into each outcome, to tell apart the models of one run


def prediction(inference_url: str, key: Optional[str], model: str, payload: Payload, route: str = "predictions") -> Request:
    """`payload` to /<route>/<model> with the inference key (None: a server without token authorization)."""
    return Request(f"{inference_url}/{route}/{model}", payload.body, {**bearer(key), **payload.headers}, model)


@dataclass(frozen=True, slots=True)
class Outcome:
    model: str
    due: float              # time.monotonic() when it was due: its send time, or its slot in an open loop
    done: float
    status: Optional[int]   # NO_ANSWER when none came within the timeout
    error: str = ""         # the exception (no answer), or the error body's "type" (an answer other than 200)

    @property
    def latency(self) -> float:
        """Seconds from when the request was due: an open loop that falls behind counts the wait."""
        return self.done - self.due

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def status_text(self) -> str:
        return "no answer" if self.status is NO_ANSWER else str(self.status)


def sample_payloads(kinds: Mapping[str, ModelKind]) -> Dict[str, Payload]:
    """One valid request per model (model → its kind, from its model.json): `make serve`'s sample for its modality."""
    with tempfile.TemporaryDirectory() as directory:
        files = samples.write_samples(Path(directory), {kind.modality for kind in kinds.values()})
        content = {modality: path.read_bytes() for modality, path in files.items()}
    return {model: Payload(content[kind.modality], {"Content-Type": CONTENT_TYPES[kind.modality]})
            for model, kind in kinds.items()}


def _error_type(body: bytes) -> str:
    """An error answer's JSON "type" (TorchServe's errors and the handler's carry one), else its first bytes."""
    try:
        return str(json.loads(body).get("type", ""))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def _session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    # Keep-alive connections, at most `connections` at once; TorchServe's Netty keeps them open between requests.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def _send(session: aiohttp.ClientSession, request: Request, due: float) -> Outcome:
    method = "GET" if request.body is None else "POST"
    try:
        async with session.request(method, request.url, data=request.body, headers=dict(request.headers)) as response:
            body, status = await response.read(), response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return Outcome(request.model, due, time.monotonic(), NO_ANSWER, f"{type(error).__name__}: {error}")
    return Outcome(request.model, due, time.monotonic(), status, "" if status == 200 else _error_type(body))


async def _closed_loop(request: Request, clients: int, seconds: float, max_requests: float, timeout_s: float,
                       outcomes: List[Outcome], stop: Optional[threading.Event] = None) -> List[Outcome]:
    sent, deadline = 0, time.monotonic() + seconds
    async with _session(clients, timeout_s) as session:

        async def client() -> None:
            nonlocal sent
            while time.monotonic() < deadline and sent < max_requests and not (stop and stop.is_set()):
                sent += 1  # one event loop: no lock needed
                outcomes.append(await _send(session, request, time.monotonic()))

        await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes


def closed_loop(request: Request, clients: int, seconds: float, max_requests: Optional[int] = None,
                timeout_s: float = 60.0) -> List[Outcome]:
    """`clients` back-to-back clients for `seconds` (and at most `max_requests` in all), in answer order."""
    return asyncio.run(_closed_loop(request, clients, seconds, math.inf if max_requests is None else max_requests,
                                    timeout_s, []))


def burst(request: Request, count: int, timeout_s: float = 60.0) -> List[Outcome]:
    """`count` requests sent at once, each on a connection of its own, in answer order."""
    return closed_loop(request, clients=count, seconds=math.inf, max_requests=count, timeout_s=timeout_s)


def send(request: Request, timeout_s: float = 30.0) -> Outcome:
    """One request, on a new connection."""
    async def one() -> Outcome:
        async with _session(1, timeout_s) as session:
            return await _send(session, request, time.monotonic())

    return asyncio.run(one())


def open_loop(schedule: Sequence[Tuple[Request, float]], seconds: float, connections: int = 16,
              timeout_s: float = 30.0) -> List[Outcome]:
    """Each (request, rate) of `schedule` due `rate` times a second for `seconds`, all at once: an open
    loop, whose arrivals do not wait for answers. A stream keeps at most `connections` open; a request
    due while they are all busy waits for one, and its latency counts from when it was due. Outcomes
    in the order they were due."""
    async def stream(request: Request, rate: float, start: float) -> List[Outcome]:
        async with _session(connections, timeout_s) as session:
            sending = []
            for slot in range(max(1, int(rate * seconds))):
                due = start + slot / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sending.append(asyncio.create_task(_send(session, request, due)))
            return list(await asyncio.gather(*sending))

    async def streams() -> List[Outcome]:
        start = time.monotonic() + 0.05
        done = await asyncio.gather(*(stream(request, rate, start) for request, rate in schedule))
        return sorted((outcome for outcomes in done for outcome in outcomes), key=lambda outcome: outcome.due)

    return asyncio.run(streams())


class SteadyLoad:
    """`clients` back-to-back clients in a background thread, from `start()` until `stop()`,
    `max_seconds` or `max_requests` in all, whichever comes first: the load a test keeps on while it
    kills, scales or bursts. `outcomes` grows as answers arrive (copy it to read it meanwhile)."""

    def __init__(self, request: Request, clients: int = 4, max_seconds: float = 60.0, max_requests: int = 20_000,
                 timeout_s: float = 30.0):
        self.outcomes: List[Outcome] = []
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None

        def run() -> None:
            try:
                asyncio.run(_closed_loop(request, clients, max_seconds, max_requests, timeout_s, self.outcomes, self._stop))
            except BaseException as error:  # re-raised by stop(): a load that broke must not pass for an idle one
                self._error = error

        self._thread = threading.Thread(target=run, daemon=True)

    def start(self) -> "SteadyLoad":
        self._thread.start()
        return self

    def wait_for_answers(self, count: int, since: float = 0.0, ok: bool = False, timeout_s: float = 120.0) -> None:
        """Returns once `count` requests sent after `since` (a time.monotonic()) are answered, with 200 if
        `ok`: a test waits for the load to have done something, never for a fixed time. TimeoutError
        after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while sum(o.due > since and (o.ok or not ok) for o in list(self.outcomes)) < count:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the load stopped before {count} answers: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} answers within {timeout_s:g} s: {summary(list(self.outcomes))}")
            time.sleep(0.05)

    def stop(self) -> List[Outcome]:
        """Stops sending, waits for the answers in flight (each bounded by its timeout); every outcome, in answer order."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return sorted(self.outcomes, key=lambda outcome: outcome.done)

    def __enter__(self) -> "SteadyLoad":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, nearest-rank (always a value that occurred); NaN for none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def summary(outcomes: Sequence[Outcome]) -> dict:
    """The one report of a run: requests, answers by status ("200", "503", "no answer" ...), errors (all
    but the 200s), 200s per second over the run's span (first due to last answer), and the 200s'
    latency percentiles in ms (None when there are none)."""
    latencies = [outcome.latency for outcome in outcomes if outcome.ok]
    span = max(o.done for o in outcomes) - min(o.due for o in outcomes) if outcomes else 0.0

    def ms(q: float) -> Optional[float]:
        return round(1000 * percentile(latencies, q), 2) if latencies else None

    return {
        "requests": len(outcomes), "errors": len(outcomes) - len(latencies),
        "statuses": dict(Counter(outcome.status_text for outcome in outcomes)), "seconds": round(span, 2),
        "req_per_s": round(len(latencies) / span, 2) if span > 0 else 0.0,
        "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99), "max_ms": ms(100),
    }
