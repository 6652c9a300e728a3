"""Two versions of one model in one model store (text_classifier 1.0 and 2.0, see conftest): both load at
start, each is addressable, scaling one leaves the other alone, and switching the default under load
(a rollout, and the rollback: the same call) fails no request."""
import threading
import time

import requests

from conftest import SECOND_VERSION, VERSIONED_MODEL

TEXT = "please cancel my subscription"


def versions(server) -> dict:
    """version → its description, from GET /models/<m>/all."""
    return {entry["modelVersion"]: entry for entry in server.describe(f"{VERSIONED_MODEL}/all")}


def default_version(server) -> str:
    return server.describe(VERSIONED_MODEL)[0]["modelVersion"]


def set_default(server, version: str) -> None:
    response = requests.put(f"{server.management_url}/models/{VERSIONED_MODEL}/{version}/set-default",
                            headers=server.management_headers, timeout=30)
    assert response.status_code == 200, response.text


def test_both_versions_load_and_each_answers(server):
    assert set(versions(server)) == {"1.0", SECOND_VERSION}
    assert default_version(server) == "1.0"
    for version in ("1.0", SECOND_VERSION):
        response = requests.post(f"{server.inference_url}/predictions/{VERSIONED_MODEL}/{version}", data=TEXT,
                                 headers={**server.inference_headers, "Content-Type": "text/plain"}, timeout=30)
        assert response.status_code == 200 and next(iter(response.json())) == "cancel"


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


def test_switching_the_default_version_under_load_fails_no_request(server):
    statuses, stop = [], threading.Event()

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(f"{server.inference_url}/predictions/{VERSIONED_MODEL}", data=TEXT, timeout=30,
                                        headers={**server.inference_headers, "Content-Type": "text/plain"})
                statuses.append(response.status_code)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.5)
        set_default(server, SECOND_VERSION)     # the rollout
        time.sleep(1.5)
        assert default_version(server) == SECOND_VERSION
        set_default(server, "1.0")              # and the rollback: the same call
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    assert default_version(server) == "1.0"
    assert len(statuses) > 20 and set(statuses) == {200}, f"{len(statuses)} requests, statuses {sorted(set(statuses))}"
