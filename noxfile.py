"""The test suite on every supported Python: ``nox`` (or ``nox -s tests-3.13``).

nox finds ``python3.11``, ``python3.12`` and ``python3.13`` on ``PATH`` (``.ci/run`` puts the
machine's pyenv builds there) and downloads none: a missing one fails the run. The
service-backed tests run when their ``CALLBOT_TEST_*`` variables are set, as with plain pytest;
arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.download_python = "never"  # the machine's Pythons only; a missing one is an error
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests"]

PYTHONS = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-W", "error", "-p", "no:cacheprovider", *session.posargs)
