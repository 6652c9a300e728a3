"""Two versions of one model in one model store (text_classifier 1.0 and 2.0, see conftest: 2.0 answers
SECOND_VERSION_TOP_K labels, 1.0 three): both load at start, each is addressable, scaling one leaves the
other alone, and switching the default under load (a rollout, and the rollback: the same call) takes
effect for the next request and fails none."""
import threading
import time
from dataclasses import dataclass
from typing import Optional

import requests

from conftest import SECOND_VERSION, SECOND_VERSION_TOP_K, VERSIONED_MODEL

TEXT = "please cancel my subscription"
FIRST_VERSION_TOP_K = 3
# Until a phase has this many answers (or the deadline passes, which fails the test): a wait on events, not a sleep.
ANSWERS_PER_PHASE, PHASE_DEADLINE_S = 12, 60


def versions(server) -> dict:
    """version → its description, from GET /models/<m>/all."""
    return {entry["modelVersion"]: entry for entry in server.describe(f"{VERSIONED_MODEL}/all")}


def default_version(server) -> str:
    return server.describe(VERSIONED_MODEL)[0]["modelVersion"]


def set_default(server, version: str) -> None:
    response = requests.put(f"{server.management_url}/models/{VERSIONED_MODEL}/{version}/set-default",
                            headers=server.management_headers, timeout=30)
    assert response.status_code == 200, response.text


def predict(session, server, path: str) -> requests.Response:
    return session.post(f"{server.inference_url}/predictions/{path}", data=TEXT, timeout=30,
                        headers={**server.inference_headers, "Content-Type": "text/plain"})


def test_both_versions_load_and_each_answers(server):
    assert set(versions(server)) == {"1.0", SECOND_VERSION}
    assert default_version(server) == "1.0"
    for version, top_k in (("1.0", FIRST_VERSION_TOP_K), (SECOND_VERSION, SECOND_VERSION_TOP_K)):
        response = predict(requests, server, f"{VERSIONED_MODEL}/{version}")
        assert response.status_code == 200 and next(iter(response.json())) == "cancel"
        assert len(response.json()) == top_k, (version, response.json())


def test_scaling_one_version_leaves_the_other_alone(server):
    try:
        response = requests.put(f"{server.management_url}/models/{VERSIONED_MODEL}/{SECOND_VERSION}",
                                params={"min_worker": 2, "max_worker": 2, "synchronous": "true"},
                                headers=server.management_headers, timeout=180)
        assert response.status_code == 200, response.text
        workers = {version: len(entry["workers"]) for version, entry in versions(server).items()}
        assert workers == {"1.0": 1, SECOND_VERSION: 2}
    finally:
        requests.put(f"{server.management_url}/models/{VERSIONED_MODEL}/{SECOND_VERSION}",
                     params={"min_worker": 1, "max_worker": 1, "synchronous": "true"},
                     headers=server.management_headers, timeout=180)


@dataclass(frozen=True)
class Answer:
    sent: float                # time.monotonic() when the request was sent
    done: float
    status: Optional[int]      # None: no HTTP answer (the exception is in `error`)
    labels: int = 0            # how many labels the answer held: which version answered
    error: str = ""


def test_switching_the_default_version_under_load_takes_effect_at_once_and_fails_no_request(server):
    answers, stop = [], threading.Event()

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = predict(session, server, VERSIONED_MODEL)
                    labels = len(response.json()) if response.status_code == 200 else 0
                    answers.append(Answer(sent, time.monotonic(), response.status_code, labels))
                except Exception as error:  # a client that fails records it: it counts as a failed request
                    answers.append(Answer(sent, time.monotonic(), None, error=repr(error)))

    def answered_since(moment: float) -> None:
        deadline = time.monotonic() + PHASE_DEADLINE_S
        while sum(a.sent > moment for a in list(answers)) < ANSWERS_PER_PHASE and time.monotonic() < deadline:
            time.sleep(0.05)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        started = time.monotonic()
        answered_since(started)
        rollout_sent = time.monotonic()
        set_default(server, SECOND_VERSION)     # the rollout
        rollout_done = time.monotonic()
        answered_since(rollout_done)
        assert default_version(server) == SECOND_VERSION
        rollback_sent = time.monotonic()
        set_default(server, "1.0")              # and the rollback: the same call
        rollback_done = time.monotonic()
        answered_since(rollback_done)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    assert default_version(server) == "1.0"
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    # Each request sent after a switch returned is answered by the new default; the ones in flight
    # during a switch may be answered by either version.
    phases = {
        "before the rollout": ([a for a in answers if a.done < rollout_sent], FIRST_VERSION_TOP_K),
        "after the rollout": ([a for a in answers if rollout_done < a.sent and a.done < rollback_sent], SECOND_VERSION_TOP_K),
        "after the rollback": ([a for a in answers if a.sent > rollback_done], FIRST_VERSION_TOP_K),
    }
    for phase, (phase_answers, top_k) in phases.items():
        assert len(phase_answers) >= ANSWERS_PER_PHASE, (phase, len(phase_answers))  # else the deadline passed
        assert {a.labels for a in phase_answers} == {top_k}, (phase, sorted({a.labels for a in phase_answers}))
