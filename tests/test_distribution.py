"""What an installed flask-callbot carries: its license, ``py.typed``, its pytest entry point.

``.ci/package`` runs the whole suite against the built wheel installed in a fresh environment,
with ``CALLBOT_TEST_INSTALLED=1``: then the package must come from that environment, not from a
source tree.
"""

from __future__ import annotations

import json
import os
import sysconfig
from importlib import metadata, resources
from pathlib import Path

import pytest

import flask_callbot

DISTRIBUTION = metadata.distribution("flask-callbot")
INSTALLED = os.environ.get("CALLBOT_TEST_INSTALLED") == "1"


def test_the_license_is_declared_and_shipped() -> None:
    assert DISTRIBUTION.metadata["License-Expression"] == "BSD-3-Clause"
    licenses = [f for f in DISTRIBUTION.files or () if f.name == "LICENSE"]
    assert licenses, DISTRIBUTION.files
    assert "Redistribution and use in source and binary forms" in licenses[0].read_text()


def test_the_package_is_typed() -> None:
    assert resources.files("flask_callbot").joinpath("py.typed").is_file()


def test_the_pytest_plugin_is_registered() -> None:
    (entry_point,) = (
        e for e in metadata.entry_points(group="pytest11") if e.name == "flask_callbot"
    )
    assert entry_point.value == "flask_callbot.pytest_plugin"
    assert entry_point.load().__name__ == "flask_callbot.pytest_plugin"


@pytest.mark.skipif(not INSTALLED, reason="set CALLBOT_TEST_INSTALLED=1 (.ci/package) to run")
def test_the_suite_runs_against_the_installed_wheel() -> None:
    package = Path(flask_callbot.__file__).resolve().parent
    assert package.parent == Path(sysconfig.get_paths()["purelib"]).resolve()
    direct_url = DISTRIBUTION.read_text("direct_url.json")
    assert direct_url is not None
    assert json.loads(direct_url)["url"].endswith(".whl")
    assert not json.loads(direct_url).get("dir_info", {}).get("editable")
