"""Registration: config checked at register time, routes, per-app state, several apps at once."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_callbot import ConfigurationError, callback_urls, create_blueprint
from flask_callbot.config import load_settings
from flask_callbot.state import get_state
from flask_callbot.testing import record_signals, task_payload

from support import SECRET, UUID, Clock, Sender, assert_reply


def new_app(tmp_path: Any, **config: Any) -> Flask:
    app = Flask("registration_test", instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    return app


@pytest.mark.parametrize("key", ["CALLBOT_SECRET_KEY", "CALLBOT_UUID"])
def test_missing_credentials_fail_at_registration(tmp_path: Any, key: str) -> None:
    config = {"CALLBOT_SECRET_KEY": SECRET, "CALLBOT_UUID": UUID}
    del config[key]
    app = new_app(tmp_path, **config)
    with pytest.raises(ConfigurationError, match=key):
        app.register_blueprint(create_blueprint())
    assert "callbot" not in app.extensions


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"CALLBOT_SECRET_KEY": ""}, "CALLBOT_SECRET_KEY"),
        ({"CALLBOT_SECRET_KEY": []}, "CALLBOT_SECRET_KEY"),
        ({"CALLBOT_SECRET_KEY": [SECRET, 5]}, "CALLBOT_SECRET_KEY"),
        ({"CALLBOT_UUID": 12}, "CALLBOT_UUID"),
        ({"CALLBOT_UUID": "has space"}, "CALLBOT_UUID"),
        ({"CALLBOT_MAX_AGE": "300"}, "CALLBOT_MAX_AGE"),
        ({"CALLBOT_MAX_AGE": 0}, "CALLBOT_MAX_AGE"),
        ({"CALLBOT_MAX_FUTURE_SKEW": -1}, "CALLBOT_MAX_FUTURE_SKEW"),
        ({"CALLBOT_MAX_CONTENT_LENGTH": True}, "CALLBOT_MAX_CONTENT_LENGTH"),
        ({"CALLBOT_SIGN_ALGORITHMS": ["SHA1"]}, "CALLBOT_SIGN_ALGORITHMS"),
        ({"CALLBOT_SIGN_ALGORITHMS": []}, "CALLBOT_SIGN_ALGORITHMS"),
        ({"CALLBOT_DATABASE_URL": 5}, "CALLBOT_DATABASE_URL"),
        ({"CALLBOT_DATABASE_URL": "nosuchdb://x"}, "CALLBOT_DATABASE_URL"),
        ({"CALLBOT_ENGINE_OPTIONS": []}, "CALLBOT_ENGINE_OPTIONS"),
        ({"CALLBOT_SQLITE_SYNCHRONOUS": "OFF"}, "CALLBOT_SQLITE_SYNCHRONOUS"),
    ],
)
def test_bad_values_are_named(tmp_path: Any, config: dict[str, Any], key: str) -> None:
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID)
    app.config.update(config)
    with pytest.raises(ConfigurationError, match=key):
        app.register_blueprint(create_blueprint())


def test_a_postgres_url_says_which_form_to_write(tmp_path: Any) -> None:
    """Heroku's ``postgres://`` has no SQLAlchemy dialect: say what to write instead."""
    url = "postgres://app@db/callbot"
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID, CALLBOT_DATABASE_URL=url)
    with pytest.raises(ConfigurationError, match=r"write the URL as postgresql\+psycopg://"):
        app.register_blueprint(create_blueprint())


def test_default_store_is_sqlite_in_the_instance_folder(tmp_path: Any) -> None:
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID)
    app.register_blueprint(create_blueprint(clock=Clock()))
    assert_reply(Sender(app.test_client(), Clock()).post("task", task_payload()), 200, 0)
    assert (tmp_path / "instance" / "callbot.sqlite3").exists()
    store = get_state(app).store
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    store.dispose()


def test_every_key_is_read_into_the_settings(tmp_path: Any) -> None:
    """The registration reads nothing but the settings: the store's default and the metrics
    registry are decided there too."""
    credentials = {"CALLBOT_SECRET_KEY": SECRET, "CALLBOT_UUID": UUID}
    default = load_settings(credentials, str(tmp_path))
    assert default.database_url_is_default
    assert default.database_url == f"sqlite:///{tmp_path / 'callbot.sqlite3'}"
    assert (default.metrics, default.metrics_registry) == (False, None)
    registry = CollectorRegistry()
    config = {
        **credentials,
        "CALLBOT_DATABASE_URL": "sqlite://",
        "CALLBOT_METRICS": True,
        "CALLBOT_METRICS_REGISTRY": registry,
    }
    given = load_settings(config, str(tmp_path))
    assert (given.database_url, given.database_url_is_default) == ("sqlite://", False)
    assert given.metrics_registry is registry
    off = load_settings({**config, "CALLBOT_METRICS": False}, str(tmp_path))
    assert off.metrics_registry is None


def test_the_state_is_built_whole_and_never_changed(make_app: Callable[..., Flask]) -> None:
    state = get_state(make_app(CALLBOT_METRICS=True))
    assert state.metrics is not None
    assert state.enqueue is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.clock = time.time  # type: ignore[misc]


def test_sqlite_synchronous_can_be_full(tmp_path: Any) -> None:
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID)
    app.config["CALLBOT_SQLITE_SYNCHRONOUS"] = "full"
    app.register_blueprint(create_blueprint(clock=Clock()))
    assert_reply(Sender(app.test_client(), Clock()).post("task", task_payload()), 200, 0)
    store = get_state(app).store
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.dispose()


def test_in_memory_store(tmp_path: Any) -> None:
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID)
    app.config["CALLBOT_DATABASE_URL"] = "sqlite://"
    app.register_blueprint(create_blueprint(clock=Clock()))
    sender = Sender(app.test_client(), Clock())
    assert_reply(sender.post("task", task_payload(), request_id="m"), 200, 0)
    assert "duplicate" in sender.post("task", task_payload(), request_id="m").get_json()["retMsg"]
    assert not (tmp_path / "instance").exists()


def test_routes_with_and_without_prefix(tmp_path: Any) -> None:
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID)
    app.config["CALLBOT_DATABASE_URL"] = "sqlite://"
    clock = Clock()
    app.register_blueprint(create_blueprint(clock=clock), url_prefix="/hooks")
    rules = {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("callbot.")}
    assert rules == {
        "/hooks/api/v3/taskCallback",
        "/hooks/api/v3/orderCallback",
        "/hooks/api/v3/callCallback",
    }
    bare = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID)
    bare.config["CALLBOT_DATABASE_URL"] = "sqlite://"
    bare.register_blueprint(create_blueprint())
    assert {r.rule for r in bare.url_map.iter_rules() if r.endpoint.startswith("callbot.")} == {
        "/api/v3/taskCallback",
        "/api/v3/orderCallback",
        "/api/v3/callCallback",
    }
    reply = Sender(app.test_client(), clock, prefix="/hooks").post("task", task_payload())
    assert_reply(reply, 200, 0)


def test_each_call_returns_a_new_blueprint() -> None:
    assert create_blueprint() is not create_blueprint()


def test_a_second_callbot_blueprint_on_one_app_is_refused(tmp_path: Any) -> None:
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID)
    app.config["CALLBOT_DATABASE_URL"] = "sqlite://"
    app.register_blueprint(create_blueprint())
    with pytest.raises(ConfigurationError, match="already"):
        app.register_blueprint(create_blueprint(name="other"))


def test_unregistered_app_has_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="register create_blueprint"):
        get_state(new_app(tmp_path))


def test_two_apps_in_one_process_keep_their_own_state(tmp_path: Any) -> None:
    clock = Clock()
    apps = []
    for name, secret in (("one", SECRET), ("two", "another-secret-for-app-two")):
        app = new_app(tmp_path / name, CALLBOT_SECRET_KEY=secret, CALLBOT_UUID=UUID)
        app.config["CALLBOT_DATABASE_URL"] = "sqlite://"
        app.register_blueprint(create_blueprint(clock=clock))
        apps.append(app)
    one, two = apps
    with record_signals(sender=one) as sent_one, record_signals(sender=two) as sent_two:
        assert_reply(Sender(one.test_client(), clock).post("task", task_payload()), 200, 0)
        refused = Sender(two.test_client(), clock).post("task", task_payload())
        assert_reply(refused, 401, 6)
        accepted = Sender(two.test_client(), clock, secret_key="another-secret-for-app-two").post(
            "task", task_payload()
        )
        assert_reply(accepted, 200, 0)
    assert sent_one[0].name == "callback-received"
    assert sent_two[0].name == "callback-rejected"
    assert get_state(one).store is not get_state(two).store


def test_secret_rotation_from_config(tmp_path: Any) -> None:
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=["old-secret", "new-secret"], CALLBOT_UUID=UUID)
    app.config["CALLBOT_DATABASE_URL"] = "sqlite://"
    app.register_blueprint(create_blueprint(clock=Clock()))
    for key in ("old-secret", "new-secret"):
        sender = Sender(app.test_client(), Clock(), secret_key=key)
        assert_reply(sender.post("task", task_payload()), 200, 0)
    sender = Sender(app.test_client(), Clock(), secret_key=SECRET)
    assert_reply(sender.post("task", task_payload()), 401, 6)


def test_sign_algorithms_config(tmp_path: Any) -> None:
    app = new_app(tmp_path, CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID)
    app.config.update(CALLBOT_DATABASE_URL="sqlite://", CALLBOT_SIGN_ALGORITHMS="sha256")
    app.register_blueprint(create_blueprint(clock=Clock()))
    sender = Sender(app.test_client(), Clock())
    assert_reply(sender.post("task", task_payload(), algorithm="SHA256"), 200, 0)
    assert_reply(sender.post("task", task_payload(), algorithm="MD5"), 401, 6)


def test_callback_urls_for_creating_a_task(tmp_path: Any) -> None:
    app = Flask("urls", instance_path=str(tmp_path))
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID, CALLBOT_DATABASE_URL="sqlite://"
    )
    app.register_blueprint(create_blueprint(), url_prefix="/hooks")
    assert callback_urls(app, "https://crm.example.com/") == {
        "taskCallbackUrl": "https://crm.example.com/hooks/api/v3/taskCallback",
        "orderCallbackUrl": "https://crm.example.com/hooks/api/v3/orderCallback",
        "callCallbackUrl": "https://crm.example.com/hooks/api/v3/callCallback",
    }
    with pytest.raises(ConfigurationError, match="needs base_url, or SERVER_NAME"):
        callback_urls(app)
    with app.test_request_context(base_url="https://in.request.example"):
        urls = callback_urls(app)
    assert urls["orderCallbackUrl"] == "https://in.request.example/hooks/api/v3/orderCallback"
    app.config.update(SERVER_NAME="hooks.example.com", PREFERRED_URL_SCHEME="https")
    assert callback_urls(app)["callCallbackUrl"] == (
        "https://hooks.example.com/hooks/api/v3/callCallback"
    )
    with pytest.raises(ConfigurationError, match="is not an http"):
        callback_urls(app, "crm.example.com")
    with pytest.raises(ConfigurationError, match="register create_blueprint"):
        callback_urls(Flask("bare"), "https://x.example")
