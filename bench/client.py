"""The benchmark's load generator: asyncio + aiohttp, keep-alive connections on loopback.

`concurrency` clients each send their next request as soon as their last one is answered (a closed
loop), for a fixed time and at most a fixed count. One asyncio loop in one process reaches several
thousand requests per second against TorchServe's /ping on this machine's cores, where 16 threads of
`requests` stop near 900 (issue 9): the report carries that ceiling (`ceiling`), so a figure near it
says the client, not the model, was the limit.
"""
import asyncio
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import aiohttp

from bench.load import percentile


@dataclass
class Run:
    """One closed-loop run: every answer's status and latency, and the wall time from first send to last answer."""
    concurrency: int
    wall_s: float
    latencies_s: List[float] = field(default_factory=list)  # of 200 answers
    statuses: Dict[str, int] = field(default_factory=dict)  # "200", "503", "no answer" → count

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) - self.answered

    def summary(self) -> dict:
        def ms(q):
            return round(1000 * percentile(self.latencies_s, q), 2) if self.latencies_s else None

        return {
            "concurrency": self.concurrency, "requests": sum(self.statuses.values()), "errors": self.errors,
            "statuses": dict(self.statuses), "seconds": round(self.wall_s, 2),
            "req_per_s": round(self.answered / self.wall_s, 2) if self.wall_s > 0 else 0.0,
            "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99),
        }


async def _closed_loop(url: str, body: Optional[bytes], headers: Dict[str, str], concurrency: int, seconds: float,
                       max_requests: int, timeout_s: float) -> Run:
    run = Run(concurrency, 0.0)
    sent = 0
    method = "POST" if body is not None else "GET"
    # One connection per client, kept alive; TorchServe's Netty keeps them open between requests.
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        started = time.perf_counter()
        deadline = started + seconds

        async def client() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1  # one event loop: no lock needed
                begin = time.perf_counter()
                try:
                    async with session.request(method, url, data=body) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = "no answer"
                run.statuses[status] = run.statuses.get(status, 0) + 1
                if status == "200":
                    run.latencies_s.append(time.perf_counter() - begin)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - started
    return run


def closed_loop(url: str, body: Optional[bytes], headers: Dict[str, str], concurrency: int, seconds: float,
                max_requests: int = 1_000_000, timeout_s: float = 60.0) -> Run:
    """`concurrency` back-to-back clients for `seconds` (and at most `max_requests` in all); GET when body is None."""
    return asyncio.run(_closed_loop(url, body, headers, concurrency, seconds, max_requests, timeout_s))


def ceiling(inference_url: str, headers: Dict[str, str], seconds: float, concurrency: int = 64) -> dict:
    """The client's own ceiling: GET /ping answered by the frontend alone, with no model in the path."""
    return closed_loop(f"{inference_url}/ping", None, headers, concurrency, seconds).summary()
