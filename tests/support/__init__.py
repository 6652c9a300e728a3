"""What the tests and the benchmark drive the bundle with; nothing a user runs (that is scripts/).

- harness.py: a handler in-process, as a TorchServe worker runs it, without Java;
- load.py: HTTP load on a running TorchServe (closed loop, open loop, a steady background load),
  each request's outcome, and one summary of them;
- faulty_archives.py: archives that fail on purpose (the out-of-memory text model, rewritten archives);
- kserve_client.py: KServe's own Python client, run from .venv-kserve;
- prometheus.py: a real Prometheus with the shipped config adapted to a test's TorchServe;
- user_models.py: a user's trained models saved in every form, with data and expected probabilities.

Imported as `tests.support.<module>` from the repository root (pytest and `python -m bench...` run
there): `tests` is a namespace package, so the tests' own folders need no __init__.py.
"""
