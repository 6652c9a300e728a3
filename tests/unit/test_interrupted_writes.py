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


def test_archive_sh_killed_mid_archive_leaves_the_previous_archive_whole(tmp_path):
    model = "image_classifier"  # the largest archive: the archiver writes it for a few seconds
    export_dir(model)
    store = tmp_path / "model_store"
    env = {**os.environ, "MODEL_STORE": str(store)}
    subprocess.run([str(REPO_ROOT / "archive.sh"), model], check=True, env=env, capture_output=True, timeout=300)
    mar = store / f"{model}.mar"
    before = sha256(mar)

    rerun = subprocess.Popen([str(REPO_ROOT / "archive.sh"), model], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and rerun.poll() is None:
            # Until the new archive is being written (any .mar under the store but the finished one).
            if any(path != mar and path.stat().st_size > 0 for path in store.rglob("*.mar")):
                break
            time.sleep(0.02)
        else:
            pytest.fail("archive.sh finished (or hung) before it could be caught writing")
        os.killpg(rerun.pid, signal.SIGKILL)
    finally:
        rerun.wait(timeout=30)
    assert sha256(mar) == before, "the archive TorchServe would load is the previous one, whole"
    with zipfile.ZipFile(mar) as archive:
        assert archive.testzip() is None and "model.json" in archive.namelist()
    # TorchServe (load_models=all) skips hidden entries of the store; make serve globs *.mar.
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == [f"{model}.mar"]
