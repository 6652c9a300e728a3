"""Every command the docs print, run as printed: each fenced `bash` block of README.md and docs/*.md
that calls curl, against a TorchServe on the printed ports, with the keys set as the README sets them.
docs/README.md tells a page's author how to write a block for it (markers, answers, preludes).

Decisions, and why:

- A TorchServe of this module's own, on config.properties' own listeners (127.0.0.1:8080/8081/8082),
  not the session server (free ports, shared with every live test): a block then runs as the reader
  types it, with no URL rewritten, and the blocks that rotate keys, scale and switch default versions
  touch no other test's server. It is started as the live tests start theirs (`own_torchserve`,
  foreground, clean PYTHONPATH) with config.properties and log4j2.xml as `make serve` uses them; gRPC
  and worker ports move to free ones (no block uses them). When 8080-8082 are taken (a `make serve`
  still up), the test fails saying so instead of testing someone else's server.
- Its model store holds only the models, and versions, that the blocks name, archived by archive.sh:
  every model would cost two more workers' start-up on two cores for nothing the docs call.
- The working directory is the reader's repository root as `make serve` leaves it: TorchServe writes
  `key_file.json` there and `scripts.samples` writes `samples/` there. Nothing else of the checkout is
  there, so a block cannot depend on it by accident.
- Each block runs in a fresh `bash` with `set -euo pipefail` (a failing step anywhere fails the block,
  pipes included) and a minimal environment, after the preludes: the README's (the keys, read from
  key_file.json as printed, so a block that mints new keys leaves the next ones working) and its
  page's earlier ones. A fresh shell per block keeps failures apart and named.
- curl is run as printed, through a shell function that adds `--dump-header` to a file (and
  `--no-progress-meter`) and tees its output to another: the block's own pipes and redirections still get what curl printed, and the test
  reads each call's status, headers and body. Every call must get an HTTP answer with the status the
  docs lead to: 200, or the marker's `expect`. Exit status 0 alone would not do: curl exits 0 on a 400.
- The answer the docs show after a block is compared by shape, with the block's last call: its keys
  recursively, the status line and header names of a plain block, and a prediction's top label and
  label count (lower labels' near-zero probabilities may swap between machines). Values are not.
- After each block every model's versions, default version and workers are as at the start; a block
  that changes them fails by name, since the next blocks would otherwise run on another server.
- One test, not one per block: blocks share one server in page order, and the summary (ran, skipped
  by name, failed) prints once, also without -s.
"""
import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from doc_pages import REPO_ROOT, Block, answer_to, blocks, differences, pages, parse_shown_answer
from scripts import samples
from scripts.local_torchserve import LISTENERS, describe, read_properties, set_default_versions
from scripts.model_store import default_versions, scan

PRINTED = {key: value for key, value in read_properties(REPO_ROOT / "config.properties").items() if key in LISTENERS}
BLOCK_TIMEOUT_S = 300
SETTLE_S = 30  # a synchronous scale-down may still list the stopping workers for a moment

# The reader's `curl`, recording each call: a file per call, named so that they sort in call order. (Its
# output goes through tee, so curl would show a progress meter a reader's terminal does not.)
CURL_RECORDER = r'''
curl() {
  local record
  record=$(mktemp "$DOCS_TEST_CALLS/call-$(date +%s%N)-XXXXXX")
  command curl --no-progress-meter --dump-header "$record.headers" "$@" | tee "$record.body"
}
'''
MODEL_IN_URL = re.compile(r"/(?:predictions|explanations|models|v[12]/models)/([A-Za-z]\w*)(?:/(\d[\w.]*))?")


@dataclass
class Call:
    status: Optional[int]
    header_names: List[str]
    body: str


@dataclass
class Outcome:
    returncode: int
    output: str
    calls: List[Call] = field(default_factory=list)


def runnable_blocks() -> List[Tuple[Block, List[Block], Optional[Block]]]:
    """(block, the preludes it runs after, the answer shown after it) for every block that runs, in page order."""
    readme_preludes = [b for b in blocks(REPO_ROOT / "README.md") if b.marker and b.marker.kind == "prelude"]
    found = []
    for page in pages():
        page_blocks = blocks(page)
        for block in page_blocks:
            if block.runs:
                own = [b for b in page_blocks if b.marker and b.marker.kind == "prelude" and b.line < block.line]
                preludes = readme_preludes + [b for b in own if b not in readme_preludes]
                found.append((block, preludes, answer_to(page_blocks, block)))
    return found


def skipped_blocks() -> List[Block]:
    return [b for page in pages() for b in blocks(page) if b.marker and b.marker.kind == "skip"]


def models_named(texts) -> Dict[str, set]:
    """model → the versions other than 1.0 that the blocks call it by."""
    named: Dict[str, set] = {}
    for text in texts:
        for model, version in MODEL_IN_URL.findall(text):
            named.setdefault(model, set()).update({version} if version and version != "1.0" else set())
    return named


def printed_ports_taken() -> List[str]:
    taken = []
    for address in PRINTED.values():
        host, port = address.rsplit("//", 1)[1].rsplit(":", 1)
        with socket.socket() as sock:
            if sock.connect_ex((host, int(port))) == 0:
                taken.append(address)
    return taken


@pytest.fixture(scope="module")
def docs_server(own_torchserve, tmp_path_factory):
    taken = printed_ports_taken()
    if taken:
        pytest.fail(f"{', '.join(taken)} in use: the docs test serves on the printed ports so that every block runs "
                    "as printed. Stop the server there first (a `make serve`: `make stop`).")
    named = models_named(block.text for block, _, _ in runnable_blocks())
    missing = sorted(model for model in named if not (REPO_ROOT / "exports" / model / "model.json").exists())
    if missing:
        pytest.fail(f"the docs call {', '.join(missing)}, which have no export in exports/")
    store = tmp_path_factory.mktemp("docs_model_store")
    archive = [str(REPO_ROOT / "archive.sh")]
    subprocess.run(archive + sorted(named), check=True, stdout=subprocess.DEVNULL, env={**os.environ, "MODEL_STORE": str(store)})
    for model, versions in named.items():
        for version in versions:
            subprocess.run(archive + [model], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "MODEL_STORE": str(store), "MODEL_VERSION": version})
    ready = sorted(named) + [f"{model}/{version}" for model, versions in named.items() for version in versions]
    server = own_torchserve(store, ready, overrides=PRINTED)
    set_default_versions(server.management_url, default_versions(scan(store)[0]), server.keys["management"]["key"])
    samples.write_samples(server.process.workdir / "samples", {server.kinds[model].modality for model in named})
    return server


def server_state(server) -> Dict[str, tuple]:
    """model → (its default version, {version: workers}), with the management key as key_file.json has it now."""
    key = read_keys(server)["management"]["key"]
    return {model: (describe(server.management_url, model, key)[0]["modelVersion"],
                    {entry["modelVersion"]: len(entry["workers"]) for entry in describe(server.management_url, f"{model}/all", key)})
            for model in sorted({name.split("/")[0] for name in server.models})}


def read_keys(server) -> dict:
    return json.loads(server.process.key_file.read_text())


def run_block(block: Block, preludes: List[Block], workdir: Path, calls_dir: Path) -> Outcome:
    for stale in calls_dir.iterdir():
        stale.unlink()
    script = "\n".join(["set -euo pipefail", CURL_RECORDER, *(p.text for p in preludes), block.text])
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(workdir)), "LANG": "C.UTF-8",
                   "TMPDIR": str(workdir), "DOCS_TEST_CALLS": str(calls_dir)}
    try:
        done = subprocess.run(["bash", "-c", script], cwd=workdir, env=environment, capture_output=True,
                              timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as timeout:
        return Outcome(-1, f"timed out after {BLOCK_TIMEOUT_S}s\n{(timeout.stdout or b'').decode(errors='replace')}")
    outcome = Outcome(done.returncode, (done.stdout + done.stderr).decode(errors="replace"))
    for record in sorted(p for p in calls_dir.iterdir() if not p.suffix):
        headers = read_raw(Path(f"{record}.headers"))
        statuses = re.findall(r"^HTTP/[\d.]+\s+(\d{3})", headers, re.M)
        # With several answers (100 Continue, then the real one), the last header block is the answer's.
        last = headers.rsplit("\r\n\r\n", 2)[-2] if headers.count("\r\n\r\n") >= 2 else headers
        names = re.findall(r"^([A-Za-z0-9-]+):", last, re.M)
        outcome.calls.append(Call(int(statuses[-1]) if statuses else None, names,
                                  read_raw(Path(f"{record}.body"))))
    return outcome


def read_raw(path: Path) -> str:
    """A file's text with its \r\n kept (HTTP's line ends); "" when curl wrote none."""
    return path.read_bytes().decode(errors="replace") if path.exists() else ""


def json_body(output: str):
    """The JSON of what curl printed, after any headers `-i` printed before it."""
    while output.startswith("HTTP/"):
        output = output.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in output else ""
    return json.loads(output)


def problems_with(block: Block, answer: Optional[Block], outcome: Outcome) -> List[str]:
    problems = []
    if outcome.returncode != 0:
        problems.append(f"exited {outcome.returncode}")
    if not outcome.calls:
        return problems + ["no curl call ran"]
    expected = list(block.marker.statuses) if block.marker else [200]
    if len(expected) > 1 and len(expected) != len(outcome.calls):
        problems.append(f"{len(outcome.calls)} curl calls, the marker expects {len(expected)} statuses")
    wanted = expected if len(expected) > 1 else expected * len(outcome.calls)
    for number, (call, status) in enumerate(zip(outcome.calls, wanted), 1):
        if call.status != status:
            problems.append(f"curl call {number}: " + (f"answered {call.status}, expected {status}" if call.status
                                                       else "no HTTP answer"))
    if answer is not None:
        shown, real = parse_shown_answer(answer), outcome.calls[-1]
        if shown.status is not None and shown.status != real.status:
            problems.append(f"the answer shown has status {shown.status}, the server's {real.status}")
        lower = {name.lower() for name in real.header_names}
        problems += [f"the answer shows header {name}, the server's has none" for name in shown.header_names
                     if name.lower() not in lower]
        if shown.body is not None:
            try:
                problems += differences(shown.body, json_body(real.body))
            except ValueError:
                problems.append(f"the answer shown is JSON, the server's is not: {real.body[:300]!r}")
    return problems


def test_every_printed_command_runs_as_printed(docs_server, tmp_path, capsys):
    workdir = docs_server.process.workdir
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    start = server_state(docs_server)
    ran, failures, call_count = [], [], 0
    for block, preludes, answer in runnable_blocks():
        outcome = run_block(block, preludes, workdir, calls_dir)
        call_count += len(outcome.calls)
        problems = problems_with(block, answer, outcome)
        deadline = time.monotonic() + SETTLE_S
        while server_state(docs_server) != start and time.monotonic() < deadline:
            time.sleep(1)
        now = server_state(docs_server)
        if now != start:
            problems.append(f"left the server changed: {now}, was {start}")
            start = now  # report it once, not again for every later block
        ran.append(block.name)
        if problems:
            failures.append(f"{block.name}: {'; '.join(problems)}\n--- block ---\n{block.text}\n--- output ---\n"
                            f"{outcome.output[-3000:]}")
    skipped = skipped_blocks()
    summary = (f"docs: ran {len(ran)} blocks ({call_count} curl calls) against {', '.join(PRINTED.values())}; "
               f"skipped {len(skipped)}:\n" + "\n".join(f"  {b.name} ({b.marker.reason})" for b in skipped)
               + (f"\ndocs: {len(failures)} blocks failed" if failures else "\ndocs: none failed"))
    with capsys.disabled():  # printed also without -s: make test names what ran
        print("\n" + summary)
    assert not failures, "\n\n".join(failures) + "\n\n" + summary
