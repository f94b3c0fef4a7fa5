"""pytest fixtures for testing an app that receives Callbot callbacks (loaded via ``pytest11``).

They build on the project's own ``app`` fixture (a Flask app with ``create_blueprint()``
registered). Nothing here is autouse, so the plugin does nothing in a project that does not ask
for its fixtures; disable it with ``-p no:flask_callbot``. flask_callbot itself is imported only
when a fixture is used, so merely installing the package does not slow down pytest's start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from flask import Flask

    from flask_callbot.testing import CallbotClient, SentSignal


@pytest.fixture
def callbot_client(app: Flask) -> CallbotClient:
    """Posts signed callbacks to ``app``: ``callbot_client.post("task", task_payload())``.

    Signs with the app's ``CALLBOT_SECRET_KEY`` (the first one while rotating) and
    ``CALLBOT_UUID``, at the prefix the blueprint was registered with, stamped by the app's clock.
    """
    from flask_callbot.testing import CallbotClient  # imported late: see the module docstring

    return CallbotClient.for_app(app)


@pytest.fixture
def callbot_signals(app: Flask) -> Iterator[list[SentSignal]]:
    """Every flask_callbot signal ``app`` sends during the test, in order (a list to inspect)."""
    from flask_callbot.testing import record_signals  # imported late: see the module docstring

    with record_signals(sender=app) as sent:
        yield sent
