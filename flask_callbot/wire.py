"""The vendor's side of the wire: a body written as its senders write it, the headers it signs
it with, and a POST as it sends one.

Shared by the tools that play the vendor (:mod:`flask_callbot.testing`, the simulator, ``flask
callbot send``) and by the diagnostics that explain a refusal; the receiver itself never needs
it (it verifies with :mod:`flask_callbot.signing`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid as uuid_module
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .signing import compute_signature

Serialization = Literal["python", "compact"]
#: The ways the vendor is known to write a body: its Python sample, and its Go server.
SERIALIZATIONS: tuple[Serialization, ...] = ("python", "compact")


def serialize(payload: Mapping[str, Any], style: str = "python") -> bytes:
    """The body bytes for ``payload`` as one of the vendor's senders writes them.

    ``"python"``: ``json.dumps(payload)``, as the vendor's Python sample signs and sends it
    (``", "`` and ``": "`` separators, non-ASCII escaped). ``"compact"``: no spaces, raw UTF-8,
    as its Go server writes. A receiver must verify the bytes it got, so sign and send the same.
    """
    if style == "python":
        return json.dumps(payload).encode()
    if style == "compact":
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    raise ValueError(f"unknown serialization {style!r}: use one of {', '.join(SERIALIZATIONS)}")


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
class HttpReply:
    """A receiver's answer: the HTTP status and, for a vendor-style JSON reply, its envelope."""

    status: int
    ret_code: int | None
    ret_msg: str

    @property
    def outcome(self) -> str:
        """``"200/0"``: the HTTP status and retCode (``-`` for a reply without one)."""
        return f"{self.status}/{'-' if self.ret_code is None else self.ret_code}"


def post_callback(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> HttpReply:
    """POST one signed body as the vendor does. Raises ``OSError`` when there is no answer."""
    request = urllib.request.Request(  # noqa: S310 - the URL is checked to be http(s)
        url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return _reply(response.status, response.read(), response.headers.get_content_type())
    except urllib.error.HTTPError as error:
        with error:
            return _reply(error.code, error.read(), error.headers.get_content_type())


def _reply(status: int, data: bytes, content_type: str) -> HttpReply:
    try:
        envelope = json.loads(data)
        ret_code, ret_msg = envelope["retCode"], envelope.get("retMsg", "")
        if isinstance(ret_code, int) and not isinstance(ret_code, bool):
            return HttpReply(status, ret_code, str(ret_msg))
    except (ValueError, TypeError, KeyError):
        pass
    return HttpReply(status, None, f"not a vendor-style reply ({content_type}, {len(data)} bytes)")
