"""Helpers for testing a Callbot receiver without the vendor: sign bytes exactly as it does.

- :func:`sign_headers` signs a body; :func:`serialize` writes a payload the way the vendor's
  Python sample (``"python"``) or its Go server (``"compact"``) does;
- :func:`task_payload`, :func:`order_payload`, :func:`call_payload` build realistic payloads;
- :class:`CallbotClient` serialises once, signs those exact bytes and posts them;
- :func:`record_signals` collects what flask_callbot's signals sent.

The pytest plugin (:mod:`flask_callbot.pytest_plugin`) wraps these as fixtures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blinker import ANY, NamedSignal

from . import signals as _signals
from .events import CallbackKind
from .routes import ROUTES, find_prefix
from .state import get_state

# The wire helpers are part of the testing helpers' public API: tests sign and serialise with them.
from .wire import SERIALIZATIONS as SERIALIZATIONS
from .wire import Serialization as Serialization
from .wire import serialize as serialize
from .wire import sign_headers as sign_headers

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

#: Every signal flask_callbot sends.
ALL_SIGNALS = tuple(value for value in vars(_signals).values() if isinstance(value, NamedSignal))


def task_payload(**overrides: Any) -> dict[str, Any]:
    """A taskCallback body: a task in progress, half its orders finished (counts that add up).

    The ids and timestamps are fixed, so tests can name them; every call returns a new dict.

    :param overrides: replace top-level keys (``taskStatus=3``, ``taskStat=None``).

    .. versionadded:: 0.1.0
    """
    payload: dict[str, Any] = {
        "callbackType": 1,
        "userTaskID": "crm-campaign-42",
        "taskID": "T100",
        "sceneID": "S7",
        "taskStatus": 2,
        "createTs": 1_799_990_000,
        "taskStat": {
            "answerOrderCount": 3,
            "finishOrderCount": 5,
            "totalOrderCount": 10,
            "finishRate": 0.5,
            "totalAnswerCall": 3,
            "totalCall": 6,
            "answerRate": 0.5,
        },
    }
    payload.update(overrides)
    return payload


def order_payload(**overrides: Any) -> dict[str, Any]:
    """An orderCallback body: a finished order whose last call was answered by a person.

    Several intents (Chinese names, as the scripts write them), an SMS, a human agent and the
    script's params. Edit the returned dict for anything nested.

    :param overrides: replace top-level keys (``callInfoDetail`` as a whole).

    .. versionadded:: 0.1.0
    """
    payload = _order_call_payload(callback_type=2, call_page=False)
    payload.update(overrides)
    return payload


def call_payload(**overrides: Any) -> dict[str, Any]:
    """A callCallback body: one answered call attempt (with the call page's line fields).

    The same shape as :func:`order_payload`.

    :param overrides: replace top-level keys.

    .. versionadded:: 0.1.0
    """
    payload = _order_call_payload(callback_type=3, call_page=True)
    payload.update(overrides)
    return payload


def _order_call_payload(*, callback_type: int, call_page: bool) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "callID": "call-0001",
        "callStatus": 1,
        "callStartTs": 1_799_999_000,
        "callAnswerTs": 1_799_999_005,
        "callEndTs": 1_799_999_065,
        "callDuration": 60,
        "callAudioUrl": "https://records.example/call-0001.wav",
        "hangupCause": "NORMAL_CLEARING",
        "termSipCode": "200",
    }
    if call_page:  # the vendor documents these two on the call page only
        detail.update(callingNumber="02150000000", lineAddress="sip-line-3")
    detail.update(
        intents=[
            {"intentID": "i1", "intentTag": "interested", "intentName": "有意向", "intentLevel": 1},
            {"intentID": "i2", "intentTag": "callback", "intentName": "要求回电", "intentLevel": 2},
            {"intentID": "i3", "intentTag": "price", "intentName": "询问价格", "intentLevel": 3},
        ],
        sms=[
            {
                "smsSendTs": 1_799_999_070,
                "sysMessageID": "m-1",
                "smsContent": "您好，感谢您的接听！",  # noqa: RUF001 - Chinese punctuation
            }
        ],
        agent={
            "agentName": "李雷",
            "agentGroup": "sales",
            "agentLabel": "senior",
            "agentCallStatus": 1,
            "agentCallElapsed": 42,
            "manualCallStart": 1_799_999_020,
            "manualCallAnswer": 1_799_999_021,
            "manualCallEnd": 1_799_999_063,
            "manualHangupBy": 2,
        },
        params=[{"name": "product", "value": "宽带套餐"}, {"name": "discount", "value": "20%"}],
    )
    return {
        "callbackType": callback_type,
        "orderID": "order-0001",
        "userPhone": "8613800138000",
        "userName": "王小明",
        "sceneID": "S7",
        "userTaskID": "crm-campaign-42",
        "taskID": "T100",
        "finish": True,
        "other": "crm-contact=991",
        "callInfoDetail": detail,
    }


class CallbotClient:
    """Posts callbacks to an app as the vendor does: serialise once, sign those bytes, post them.

    :meth:`for_app` reads all of these from an app set up with ``create_blueprint()``.

    :param client: a Flask test client.
    :param secret_key: the key to sign with.
    :param uuid: the account uuid to sign with.
    :param prefix: where the blueprint is mounted.
    :param clock: stamps ``createTs`` (give it the app's clock when tests move time).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        client: FlaskClient,
        *,
        secret_key: str,
        uuid: str,
        prefix: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.secret_key = secret_key
        self.uuid = uuid
        self.prefix = prefix.rstrip("/")
        self.clock = clock

    @classmethod
    def for_app(cls, app: Flask, client: FlaskClient | None = None) -> CallbotClient:
        """A client signing with the app's own credentials (the first key while rotating), at
        its routes' prefix and by its clock."""
        state = get_state(app)
        return cls(
            client if client is not None else app.test_client(),
            secret_key=state.settings.secret_keys[0],
            uuid=state.settings.uuid,
            prefix=find_prefix(app),
            clock=state.clock,
        )

    def url(self, kind: CallbackKind | str) -> str:
        """The path of ``kind``'s route (``"task"``, ``"order"`` or ``"call"``)."""
        return self.prefix + ROUTES[CallbackKind(kind)]

    def post(
        self,
        kind: CallbackKind | str,
        payload: Mapping[str, Any] | bytes,
        *,
        serialization: str = "python",
        algorithm: str = "MD5",
        algorithm_header: bool = False,
        request_id: str | None = None,
        create_ts: int | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> TestResponse:
        """Sign and post one callback; ``payload`` is a dict (serialised once) or exact bytes.

        ``headers`` are applied over the signed ones (to send a wrong or missing header, give it
        as ``""``). The body is posted with ``data=``: the test client would re-serialise a
        ``json=`` argument, and the signature would no longer cover what is sent.
        """
        body = payload if isinstance(payload, bytes) else serialize(payload, serialization)
        signed = sign_headers(
            body,
            secret_key=self.secret_key,
            uuid=self.uuid,
            algorithm=algorithm,
            request_id=request_id,
            create_ts=int(self.clock()) if create_ts is None else create_ts,
            algorithm_header=algorithm_header,
        )
        sent = {"Content-Type": "application/json", **signed, **(headers or {})}
        return self.client.post(self.url(kind), data=body, headers=sent)


@dataclass(frozen=True, slots=True)
class SentSignal:
    """One signal as a receiver saw it."""

    name: str
    sender: Any
    kwargs: dict[str, Any]


@contextmanager
def record_signals(*signals: NamedSignal, sender: Any = ANY) -> Iterator[list[SentSignal]]:
    """Collect what ``signals`` (default: all of flask_callbot's) send while the block runs.

    Receivers are connected strongly and disconnected on exit.

    :param signals: the signals to watch; default: all of flask_callbot's.
    :param sender: ``app`` to see only one app's signals.

    .. versionadded:: 0.1.0
    """
    chosen = signals or ALL_SIGNALS
    sent: list[SentSignal] = []

    def receiver_for(signal: NamedSignal) -> Callable[..., None]:
        def receive(sender: Any, **kwargs: Any) -> None:
            sent.append(SentSignal(signal.name, sender, kwargs))

        return receive

    connected = [(signal, receiver_for(signal)) for signal in chosen]
    for signal, receiver in connected:
        signal.connect(receiver, sender=sender, weak=False)
    try:
        yield sent
    finally:
        for signal, receiver in connected:
            signal.disconnect(receiver, sender=sender)
