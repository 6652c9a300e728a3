"""Nothing half-written where a reader would take it: an export killed mid-write leaves the previous
export whole and nothing that `exports/*/model.json` matches; archive.sh killed mid-archive leaves the
previous .mar whole and nothing TorchServe loads. Both are killed with SIGKILL, as the OOM killer or a
power cut would, so no clean-up code gets to run."""
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from export_paths import REPO_ROOT, export_dir

# Writes a toy export to argv[1]; with argv[2] == "kill", SIGKILLs itself once the weights and model.json
# are written into the staging folder, while the extra file is being copied.
EXPORT_SCRIPT = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from torch import nn
    from model_defs.export import write_export

    out, mode = Path(sys.argv[1]), sys.argv[2]
    extra = out.parent / "extra.txt"
    extra.write_text(mode)
    if mode == "kill":
        shutil.copyfile = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    write_export(out, nn.Linear(3, 2), name="toy", modality="text", arch="toy", model_args={}, preprocess={},
                 labels=["a", "b"], extra_files={"extra.txt": extra})
""")


def write_toy_export(out: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(out), mode], cwd=REPO_ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)


def contents(directory: Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_an_export_killed_mid_write_leaves_the_previous_one_whole_and_no_look_alike(tmp_path):
    out = tmp_path / "exports" / "toy"
    out.parent.mkdir()
    assert write_toy_export(out, "first").returncode == 0
    before = contents(out)

    killed = write_toy_export(out, "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert contents(out) == before, "the previous export is untouched"
    assert sorted(tmp_path.glob("exports/*/model.json")) == [out / "model.json"], \
        "what the killed run left is not taken for an export (archive.sh, the live fixture, make)"

    assert write_toy_export(out, "second").returncode == 0
    assert (out / "extra.txt").read_text() == "second"
    assert sorted(tmp_path.glob("exports/*/model.json")) == [out / "model.json"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Stands in for torch-model-archiver in a copy of the checkout's layout: writes the first half of a real
# archive where archive.sh asked for the new one, says so, and waits to be killed. The real archiver
# writes for a second or two: catching it mid-write by polling depends on the machine's speed.
HALF_WRITING_ARCHIVER = """#!/usr/bin/env bash
while [[ $# -gt 0 ]]; do
  case $1 in --export-path) out=$2; shift;; --model-name) name=$2; shift;; esac
  shift
done
head -c $(( $(stat -c %s "$WHOLE_ARCHIVE") / 2 )) "$WHOLE_ARCHIVE" > "$out/$name.mar"
touch "$WRITING_FLAG"
exec sleep 600
"""


def checkout_with_a_half_writing_archiver(root: Path) -> Path:
    """archive.sh, handlers/ and model_defs/ as in the checkout, with HALF_WRITING_ARCHIVER as its archiver."""
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / "archive.sh").symlink_to(REPO_ROOT / "archive.sh")  # archive.sh finds its checkout from its own path
    for shared in ("handlers", "model_defs"):
        (root / shared).symlink_to(REPO_ROOT / shared)
    (root / ".venv" / "bin" / "python").symlink_to(Path(sys.executable))
    archiver = root / ".venv" / "bin" / "torch-model-archiver"
    archiver.write_text(HALF_WRITING_ARCHIVER)
    archiver.chmod(0o755)
    return root


def test_archive_sh_killed_mid_archive_leaves_the_previous_archive_whole(tmp_path):
    model = "text_classifier"
    export_dir(model)
    store = tmp_path / "model_store"
    env = {**os.environ, "MODEL_STORE": str(store), "EXPORTS_DIR": str(REPO_ROOT / "exports"),
           "CONFIGS_DIR": str(REPO_ROOT / "configs")}
    subprocess.run([str(REPO_ROOT / "archive.sh"), model], check=True, env=env, capture_output=True, timeout=300)
    mar = store / f"{model}.mar"
    before = sha256(mar)

    checkout = checkout_with_a_half_writing_archiver(tmp_path / "checkout")
    writing = tmp_path / "writing"
    rerun = subprocess.Popen(["bash", str(checkout / "archive.sh"), model], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True,
                             env={**env, "WHOLE_ARCHIVE": str(mar), "WRITING_FLAG": str(writing)})
    try:
        deadline = time.monotonic() + 120
        while not writing.exists():
            if rerun.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"archive.sh never reached its archiver: {rerun.stderr.read().decode()}")
            time.sleep(0.05)
        half_written = [path for path in store.rglob("*.mar") if path != mar]
        os.killpg(rerun.pid, signal.SIGKILL)
    finally:
        if rerun.poll() is None:
            os.killpg(rerun.pid, signal.SIGKILL)
        rerun.wait(timeout=30)
    assert sha256(mar) == before, "the archive TorchServe would load is the previous one, whole"
    assert len(half_written) == 1 and 0 < half_written[0].stat().st_size < mar.stat().st_size, "killed mid-write"
    with zipfile.ZipFile(mar) as archive:
        assert archive.testzip() is None and "model.json" in archive.namelist()
    # TorchServe (load_models=all) skips hidden entries of the store; make serve globs *.mar.
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == [f"{model}.mar"]
