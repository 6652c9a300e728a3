"""This worker's share of the machine's cores: torch threads = cores // live TorchServe workers,
following the live workers of every model as TorchServe scales them."""
import logging
import os
import time
from typing import Callable, Optional

import psutil  # a TorchServe dependency
import torch

logger = logging.getLogger(__name__)


def _is_torchserve_worker(process: psutil.Process) -> bool:
    try:
        return any("model_service_worker" in part for part in process.cmdline())
    except psutil.Error:  # exited while being looked at
        return False


def live_worker_count() -> int:
    """How many TorchServe workers, of every model, the frontend that started this one has now.

    Workers are the frontend's child processes running ts/model_service_worker.py. Every model's
    workers count: they all compete for the same cores. Outside TorchServe (tests, the benchmark's
    in-process run) this process is the only one, so the answer is 1.
    """
    try:
        this = psutil.Process()
        parent = this.parent()
        if parent is None or not _is_torchserve_worker(this):
            return 1
        return max(1, sum(1 for child in parent.children() if _is_torchserve_worker(child)))
    except psutil.Error:
        return 1


class WorkerThreads:
    """Gives this worker its share of the cores, and keeps it as TorchServe scales workers at run time.

    With torch's default (one thread per core in every worker), N workers oversubscribe the machine:
    measured on a 16-core host, the stock image handler went from ~30 to ~367 req/s with one thread
    per worker. The share is cores // live workers, at least 1, re-read before a batch at most every
    `recheck_seconds`: scaling through the management API (even past maxWorkers) then keeps the total
    within the cores. A fixed `threads_per_worker` in the model-config turns this off. `on_change`
    hears each new (threads, live workers): the handler reports them as metrics.
    """

    def __init__(self, fixed: Optional[int] = None, recheck_seconds: float = 2.0, cores: Optional[int] = None,
                 on_change: Optional[Callable[[int, int], None]] = None):
        self.fixed, self.recheck_seconds, self.on_change = fixed, recheck_seconds, on_change
        self.cores = cores or os.cpu_count() or 1
        self.threads, self.workers, self.checked_at = 0, 0, float("-inf")
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work already started in this process
            pass
        self.follow_live_workers(force=True)

    def follow_live_workers(self, force: bool = False) -> int:
        now = time.monotonic()
        if not force and (self.fixed or now - self.checked_at < self.recheck_seconds):
            return self.threads
        self.checked_at = now
        workers = live_worker_count()
        threads = self.fixed or max(1, self.cores // workers)
        if (threads, workers) != (self.threads, self.workers):
            torch.set_num_threads(threads)
            logger.info("worker pid %d: %d torch threads (%d live workers on %d cores%s)", os.getpid(), threads,
                        workers, self.cores, ", fixed by threads_per_worker" if self.fixed else "")
            self.threads, self.workers = threads, workers
            if self.on_change is not None:
                self.on_change(threads, workers)
        return threads
