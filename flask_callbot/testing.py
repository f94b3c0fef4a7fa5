"""Helpers for testing a Callbot receiver without the vendor: sign bytes exactly as it does."""

from __future__ import annotations

import time
import uuid as uuid_module
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from blinker import ANY, NamedSignal

from . import signals as _signals
from .signing import compute_signature

#: Every signal flask_callbot sends.
ALL_SIGNALS = tuple(value for value in vars(_signals).values() if isinstance(value, NamedSignal))


def sign_headers(
    body: bytes,
    *,
    secret_key: str,
    uuid: str,
    algorithm: str = "MD5",
    request_id: str | None = None,
    create_ts: int | str | None = None,
    algorithm_header: bool = False,
) -> dict[str, str]:
    """The four auth headers the vendor sends with ``body`` (plus ``algorithm`` if asked).

    ``request_id`` defaults to a fresh random id and ``create_ts`` to now. Post ``body`` itself
    (``data=body``), never a re-serialisation of it, or the signature will not match.
    """
    request_id = request_id or uuid_module.uuid4().hex
    create_ts = str(int(time.time()) if create_ts is None else create_ts)
    headers = {
        "requestID": request_id,
        "uuid": uuid,
        "createTs": create_ts,
        "sign": compute_signature(
            secret_key,
            body,
            create_ts=create_ts,
            request_id=request_id,
            uuid=uuid,
            algorithm=algorithm,
        ),
    }
    if algorithm_header:
        headers["algorithm"] = algorithm.upper()
    return headers


@dataclass(frozen=True, slots=True)
class SentSignal:
    """One signal as a receiver saw it."""

    name: str
    sender: Any
    kwargs: dict[str, Any]


@contextmanager
def record_signals(*signals: NamedSignal, sender: Any = ANY) -> Iterator[list[SentSignal]]:
    """Collect what ``signals`` (default: all of flask_callbot's) send while the block runs.

    Receivers are connected strongly and disconnected on exit; pass ``sender=app`` to see only
    one app's signals.
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
