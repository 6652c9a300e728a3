"""Bounded HTTP load on loopback, shared by the soak (`python -m bench.soak`) and the live fault tests.

Threads of `requests` (one keep-alive session each): enough for these models on a small machine,
where the server, not the client, is the bottleneck (DESIGN: 16 threads reach ~900 req/s on /ping).
Every loop here stops by itself, at a request count or a deadline, whichever comes first, and every
request has a client timeout, so a request that is never answered is recorded as such, not waited on.
"""
import math
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import requests

from scripts import samples

NO_ANSWER = None  # Outcome.status of a request that got no HTTP answer within its timeout


@dataclass(frozen=True)
class Outcome:
    model: str
    due: float          # time.monotonic() when it was due: its send time, or its slot in an open loop
    done: float
    status: Optional[int]
    error: str = ""     # the exception (no answer), or the JSON body's "type" (an error answer)

    @property
    def latency(self) -> float:
        """Seconds from when the request was due: an open loop that falls behind counts the wait."""
        return self.done - self.due

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Payload:
    body: bytes
    headers: Dict[str, str]


def sample_payloads(models) -> Dict[str, Payload]:
    """One valid request per model: `make serve`'s sample inputs (scripts/samples.py)."""
    with tempfile.TemporaryDirectory() as directory:
        files = samples.write_samples(Path(directory), models)
        content = {modality: path.read_bytes() for modality, path in files.items()}
    content_types = {"text": "text/plain", "image": "application/octet-stream", "audio": "application/octet-stream"}
    return {model: Payload(content[samples.modality_of(model)], {"Content-Type": content_types[samples.modality_of(model)]})
            for model in models}


class Client:
    """Sends one model's payload to one TorchServe; thread-safe use needs one Client per thread."""

    def __init__(self, inference_url: str, key: str, model: str, payload: Payload, timeout_s: float = 30.0,
                 route: str = "predictions"):
        self.url = f"{inference_url}/{route}/{model}"
        self.model, self.payload, self.timeout_s = model, payload, timeout_s
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {key}", **payload.headers})

    def send(self, due: Optional[float] = None) -> Outcome:
        due = time.monotonic() if due is None else due
        try:
            response = self.session.post(self.url, data=self.payload.body, timeout=self.timeout_s)
        except requests.RequestException as error:
            self.session.close()  # a broken connection is not reused
            return Outcome(self.model, due, time.monotonic(), NO_ANSWER, f"{type(error).__name__}: {error}")
        done = time.monotonic()
        error = ""
        if response.status_code != 200:
            try:
                error = str(response.json().get("type", ""))
            except ValueError:
                error = response.text[:200]
        return Outcome(self.model, due, done, response.status_code, error)

    def close(self) -> None:
        self.session.close()


class SteadyLoad:
    """`clients` threads, each sending its next request as soon as the last is answered (a closed
    loop), from `start()` until `stop()`, `max_seconds` or `max_requests` in all, whichever is first."""

    def __init__(self, inference_url: str, key: str, model: str, payload: Payload, clients: int = 4,
                 max_seconds: float = 60.0, max_requests: int = 20_000, timeout_s: float = 30.0):
        self.clients = [Client(inference_url, key, model, payload, timeout_s) for _ in range(clients)]
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.outcomes: List[Outcome] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(client,), daemon=True) for client in self.clients]

    def _run(self, client: Client) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if len(self.outcomes) >= self.max_requests:
                    return
            outcome = client.send()
            with self._lock:
                self.outcomes.append(outcome)

    def start(self) -> "SteadyLoad":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> List[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for client in self.clients:
            client.close()
        return sorted(self.outcomes, key=lambda outcome: outcome.done)

    def __enter__(self) -> "SteadyLoad":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def open_loop(inference_url: str, key: str, model: str, payload: Payload, rate: float, seconds: float,
              clients: int = 8, timeout_s: float = 30.0) -> List[Outcome]:
    """Requests due at a fixed `rate` per second for `seconds` (an open loop: arrivals do not wait for
    answers, as real users do not), sent by `clients` threads. A request whose slot comes while every
    thread is busy is sent late, and its latency counts from its slot."""
    count = max(1, int(rate * seconds))
    start = time.monotonic() + 0.05
    slots = iter(range(count))
    lock, outcomes = threading.Lock(), []

    def run(client: Client) -> None:
        while True:
            with lock:
                slot = next(slots, None)
            if slot is None:
                return
            due = start + slot / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            outcome = client.send(due)
            with lock:
                outcomes.append(outcome)

    pool = [Client(inference_url, key, model, payload, timeout_s) for _ in range(clients)]
    threads = [threading.Thread(target=run, args=(client,), daemon=True) for client in pool]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + timeout_s + 30)  # each send is bounded by timeout_s
    for client in pool:
        client.close()
    return sorted(outcomes, key=lambda outcome: outcome.due)


def closed_loop_rate(inference_url: str, key: str, model: str, payload: Payload, clients: int,
                     seconds: float, timeout_s: float = 30.0) -> Tuple[float, List[Outcome]]:
    """Answers per second with `clients` back-to-back clients for `seconds`: the model's saturation rate."""
    load = SteadyLoad(inference_url, key, model, payload, clients, seconds, timeout_s=timeout_s).start()
    time.sleep(seconds)
    outcomes = load.stop()
    ok = [outcome for outcome in outcomes if outcome.ok]
    if len(ok) < 2:
        return 0.0, outcomes
    span = max(outcome.done for outcome in ok) - min(outcome.due for outcome in ok)
    return len(ok) / span, outcomes


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100) of `values`, nearest-rank; NaN for none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(outcomes: List[Outcome]) -> dict:
    latencies = [outcome.latency for outcome in outcomes if outcome.ok]
    statuses: Dict[str, int] = {}
    for outcome in outcomes:
        key = "no answer" if outcome.status is NO_ANSWER else str(outcome.status)
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "requests": len(outcomes),
        "statuses": statuses,
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(1000 * percentile(latencies, 99), 1) if latencies else None,
        "max_ms": round(1000 * max(latencies), 1) if latencies else None,
    }
