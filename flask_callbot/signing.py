"""Callbot request authentication: strict header parsing, time window, uuid and signature checks.

Pure functions over bytes and strings (no Flask), so they can be reused and tested on their own.
The vendor signs ``<secret>&body=<raw body>&createTs=..&requestID=..&uuid=..`` with MD5 or SHA-256
and sends the upper-case hex digest; we always verify the raw bytes received, never a re-encoding.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import (
    InvalidAuthHeader,
    InvalidSignature,
    MissingAuthHeader,
    TimestampOutOfWindow,
    UnknownAccount,
)


class _Digest(Protocol):
    def hexdigest(self) -> str: ...


#: Digest functions by the names the vendor's ``algorithm`` header uses.
ALGORITHMS: Mapping[str, Callable[[bytes], _Digest]] = {
    "MD5": hashlib.md5,
    "SHA256": hashlib.sha256,
}
_HEX_LENGTHS = {"MD5": 32, "SHA256": 64}

# Strict forms, checked before any hashing. Bounded lengths and a charset without "&" or "="
# keep a crafted header from shifting the fields of the signed string.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_UUID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CREATE_TS = re.compile(r"[0-9]{1,12}")
_SIGN = re.compile(r"[0-9A-Fa-f]{32}|[0-9A-Fa-f]{64}")

#: The strict form of each required auth header (a regular expression matched in full), for
#: documentation (the OpenAPI document) and diagnostics.
HEADER_PATTERNS: Mapping[str, str] = {
    "requestID": _REQUEST_ID.pattern,
    "uuid": _UUID.pattern,
    "createTs": _CREATE_TS.pattern,
    "sign": _SIGN.pattern,
}

_HEADER_NAMES = {
    "requestid": "requestID",
    "uuid": "uuid",
    "createts": "createTs",
    "sign": "sign",
    "algorithm": "algorithm",
}
_REQUIRED = ("requestID", "uuid", "createTs", "sign")
#: Where a WSGI environ keeps each header.
_ENVIRON_KEYS = {name: f"HTTP_{name.upper()}" for name in _HEADER_NAMES.values()}


@dataclass(frozen=True, slots=True)
class AuthHeaders:
    """The authentication headers of one request, validated for form (not yet for truth)."""

    request_id: str
    uuid: str
    create_ts: str
    sign: str
    algorithm: str | None = None

    @property
    def request_ts(self) -> int:
        """``createTs`` as an integer (unix seconds)."""
        return int(self.create_ts)

    def expected_sign(self, secret_key: str, body: bytes, algorithm: str) -> str:
        """The ``sign`` these headers would carry for ``body`` under one key and algorithm."""
        return compute_signature(
            secret_key,
            body,
            create_ts=self.create_ts,
            request_id=self.request_id,
            uuid=self.uuid,
            algorithm=algorithm,
        )

    def fits(self, algorithm: str) -> bool:
        """Whether ``sign`` has the length of an ``algorithm`` digest (else it cannot be one)."""
        return _HEX_LENGTHS[algorithm] == len(self.sign)

    def signed_with(self, secret_key: str, body: bytes, algorithm: str) -> bool:
        """Whether ``sign`` is one key's signature of ``body`` by one algorithm (compared in
        constant time, case-insensitive)."""
        expected = self.expected_sign(secret_key, body, algorithm).encode()
        return hmac.compare_digest(expected, self.sign.upper().encode())

    def as_headers(self) -> dict[str, str]:
        """The headers as the vendor names them, for the delivery record."""
        headers = {
            "requestID": self.request_id,
            "uuid": self.uuid,
            "createTs": self.create_ts,
            "sign": self.sign,
        }
        if self.algorithm is not None:
            headers["algorithm"] = self.algorithm
        return headers


def parse_auth_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> AuthHeaders:
    """Read the auth headers (names case-insensitive) and check their form.

    Accepts a mapping, or the ``(name, value)`` pairs of ``werkzeug.datastructures.Headers``, so a
    header sent twice is seen and refused (a request's ``EnvironHeaders`` are read from the WSGI
    environ directly). Absent or empty: :class:`MissingAuthHeader`; anything else off-form:
    :class:`InvalidAuthHeader`.
    """
    found: dict[str, str] = {}
    environ = getattr(headers, "environ", None)
    if isinstance(environ, dict):  # Werkzeug's EnvironHeaders: look the five up, not walk all
        # A WSGI server joins a repeated header's values with ", ": off-form, refused below.
        found = {name: environ[key] for name, key in _ENVIRON_KEYS.items() if key in environ}
    else:
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            canonical = _HEADER_NAMES.get(name.lower())
            if canonical is None:
                continue
            if canonical in found:
                raise InvalidAuthHeader(f"header {canonical} is repeated")
            found[canonical] = value
    missing = [name for name in _REQUIRED if not found.get(name)]
    if missing:
        raise MissingAuthHeader(f"missing header(s): {', '.join(missing)}")
    request_id, uuid, create_ts, sign = (found[name] for name in _REQUIRED)
    if not _REQUEST_ID.fullmatch(request_id):
        raise InvalidAuthHeader("header requestID must be 1-128 characters of A-Z a-z 0-9 . _ -")
    if not _UUID.fullmatch(uuid):
        raise InvalidAuthHeader("header uuid must be 1-64 characters of A-Z a-z 0-9 _ -")
    if not _CREATE_TS.fullmatch(create_ts):
        raise InvalidAuthHeader("header createTs must be unix seconds, digits only")
    if not _SIGN.fullmatch(sign):
        raise InvalidAuthHeader("header sign must be a 32 or 64 character hex digest")
    algorithm = found.get("algorithm")
    if algorithm is not None:
        algorithm = algorithm.upper()
        if algorithm not in ALGORITHMS:
            raise InvalidAuthHeader("header algorithm must be MD5 or SHA256")
    return AuthHeaders(request_id, uuid, create_ts, sign, algorithm)


def is_well_formed_uuid(value: str) -> bool:
    """Whether ``value`` could ever pass the uuid header check (used to vet the config)."""
    return _UUID.fullmatch(value) is not None


def string_to_sign(
    secret_key: str, body: bytes, *, create_ts: str, request_id: str, uuid: str
) -> bytes:
    """The exact bytes the vendor hashes: fixed field order, values inserted raw."""
    return b"".join(
        (
            secret_key.encode(),
            b"&body=",
            body,
            b"&createTs=",
            create_ts.encode(),
            b"&requestID=",
            request_id.encode(),
            b"&uuid=",
            uuid.encode(),
        )
    )


def compute_signature(
    secret_key: str,
    body: bytes,
    *,
    create_ts: str,
    request_id: str,
    uuid: str,
    algorithm: str = "MD5",
) -> str:
    """Upper-case hex digest of the signed string, as the vendor sends it in ``sign``."""
    message = string_to_sign(
        secret_key, body, create_ts=create_ts, request_id=request_id, uuid=uuid
    )
    return ALGORITHMS[algorithm.upper()](message).hexdigest().upper()


def check_timestamp(create_ts: int, *, now: float, max_age: int, max_future_skew: int) -> None:
    """Refuse a request time older than ``max_age`` or more than ``max_future_skew`` ahead."""
    if create_ts < now - max_age:
        raise TimestampOutOfWindow(f"createTs is more than {max_age} s old")
    if create_ts > now + max_future_skew:
        raise TimestampOutOfWindow(f"createTs is more than {max_future_skew} s in the future")


def check_uuid(received: str, expected: str) -> None:
    """The account id must be ours, exactly (compared in constant time)."""
    if not hmac.compare_digest(received.encode(), expected.encode()):
        raise UnknownAccount("uuid is not this receiver's account")


def candidate_algorithms(auth: AuthHeaders, algorithms: Sequence[str]) -> list[str]:
    """The digests ``sign`` may be made with: the ``algorithm`` header's, which must be among
    ``algorithms``, or else every one of ``algorithms``."""
    if auth.algorithm is None:
        return list(algorithms)
    if auth.algorithm not in algorithms:
        raise InvalidSignature(f"algorithm {auth.algorithm} is not allowed here")
    return [auth.algorithm]


def verify_signature(
    auth: AuthHeaders,
    body: bytes,
    *,
    secret_keys: Sequence[str],
    algorithms: Sequence[str],
) -> str:
    """Check ``sign`` against every secret (rotation) and return the algorithm that matched.

    The ``algorithm`` header, when sent, picks the digest but must be among ``algorithms``;
    otherwise every allowed digest of the signature's length is tried. All candidates are
    compared in constant time, without stopping at the first match.
    """
    matched: str | None = None
    for algorithm in candidate_algorithms(auth, algorithms):
        if not auth.fits(algorithm):
            continue
        for key in secret_keys:
            if auth.signed_with(key, body, algorithm) and matched is None:
                matched = algorithm
    if matched is None:
        raise InvalidSignature("signature does not match")
    return matched


def authenticate(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: float,
    uuid: str,
    secret_keys: Sequence[str],
    algorithms: Sequence[str],
    max_age: int,
    max_future_skew: int,
) -> AuthHeaders:
    """The pipeline's steps 2-4, in their order: the headers' form, the time window, the uuid,
    then the signature over the raw ``body``. Raises a ``RequestRejected`` naming the first
    failure; returns the parsed headers."""
    auth = parse_auth_headers(headers)
    check_timestamp(auth.request_ts, now=now, max_age=max_age, max_future_skew=max_future_skew)
    check_uuid(auth.uuid, uuid)
    verify_signature(auth, body, secret_keys=secret_keys, algorithms=algorithms)
    return auth


def peek_request_id(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> str | None:
    """The requestID header if it is present once and well formed, for logs and rejections."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    values = [value for name, value in items if name.lower() == "requestid"]
    if len(values) == 1 and _REQUEST_ID.fullmatch(values[0]):
        return values[0]
    return None
