"""Signing: the vendor's test vectors, strict headers, the time window, rotation and algorithms."""

from __future__ import annotations

import pytest

from flask_callbot.errors import (
    InvalidAuthHeader,
    InvalidSignature,
    MissingAuthHeader,
    TimestampOutOfWindow,
    UnknownAccount,
)
from flask_callbot.signing import (
    AuthHeaders,
    candidate_algorithms,
    check_timestamp,
    check_uuid,
    compute_signature,
    parse_auth_headers,
    peek_request_id,
    string_to_sign,
    verify_signature,
)

from support import SECRET, UUID

REQUEST_ID = "0123456789abcdef0123456789abcdef"
CREATE_TS = "1700000000"
SPACED = b'{"customerId": "1234", "appKey": "xxxxxx", "status": 1}'
COMPACT = b'{"customerId":"1234","appKey":"xxxxxx","status":1}'
VECTORS = [
    (SPACED, "MD5", "5D9DF0A715F076BD80045812AB251F08"),
    (SPACED, "SHA256", "07B49BD7AAA5DB7705A2B48D6024A00D9962FE643FC5379E1627D998A53A013A"),
    (COMPACT, "MD5", "803303CCA984889E9908BB7BE4B3B343"),
    (COMPACT, "SHA256", "87F0E7F6E1C4655CC8C7FFA3E043E16990F1E8850693A4372CFEB1D8755463CE"),
]
BOTH = ("MD5", "SHA256")


def auth_for(
    body: bytes, algorithm: str, *, header: bool = False, key: str = SECRET
) -> AuthHeaders:
    sign = compute_signature(
        key, body, create_ts=CREATE_TS, request_id=REQUEST_ID, uuid=UUID, algorithm=algorithm
    )
    return AuthHeaders(REQUEST_ID, UUID, CREATE_TS, sign, algorithm if header else None)


@pytest.mark.parametrize(("body", "algorithm", "expected"), VECTORS)
def test_vendor_vectors(body: bytes, algorithm: str, expected: str) -> None:
    assert (
        compute_signature(
            SECRET,
            body,
            create_ts=CREATE_TS,
            request_id=REQUEST_ID,
            uuid=UUID,
            algorithm=algorithm,
        )
        == expected
    )


@pytest.mark.parametrize(("body", "algorithm", "expected"), VECTORS)
def test_vendor_vectors_verify_in_any_case(body: bytes, algorithm: str, expected: str) -> None:
    for sign in (expected, expected.lower()):
        auth = AuthHeaders(REQUEST_ID, UUID, CREATE_TS, sign)
        assert verify_signature(auth, body, secret_keys=[SECRET], algorithms=BOTH) == algorithm


def test_string_to_sign_is_fixed_order_and_raw() -> None:
    assert string_to_sign("k", b'{"a": "&="}', create_ts="1", request_id="r", uuid="u") == (
        b'k&body={"a": "&="}&createTs=1&requestID=r&uuid=u'
    )


def test_re_serialised_body_does_not_verify() -> None:
    auth = auth_for(SPACED, "MD5")
    with pytest.raises(InvalidSignature):
        verify_signature(auth, COMPACT, secret_keys=[SECRET], algorithms=BOTH)


def test_rotation_accepts_any_configured_key() -> None:
    auth = auth_for(COMPACT, "SHA256", key="new-secret")
    assert (
        verify_signature(auth, COMPACT, secret_keys=[SECRET, "new-secret"], algorithms=BOTH)
        == "SHA256"
    )
    with pytest.raises(InvalidSignature):
        verify_signature(auth, COMPACT, secret_keys=[SECRET], algorithms=BOTH)


def test_algorithm_header_picks_the_digest_and_must_be_allowed() -> None:
    auth = auth_for(COMPACT, "MD5", header=True)
    assert verify_signature(auth, COMPACT, secret_keys=[SECRET], algorithms=BOTH) == "MD5"
    with pytest.raises(InvalidSignature, match="not allowed"):
        verify_signature(auth, COMPACT, secret_keys=[SECRET], algorithms=("SHA256",))


def test_algorithm_header_that_contradicts_the_signature_fails() -> None:
    md5 = auth_for(COMPACT, "MD5")
    claimed_sha = AuthHeaders(REQUEST_ID, UUID, CREATE_TS, md5.sign, "SHA256")
    with pytest.raises(InvalidSignature):
        verify_signature(claimed_sha, COMPACT, secret_keys=[SECRET], algorithms=BOTH)


def test_configured_algorithms_restrict_verification_without_header() -> None:
    auth = auth_for(COMPACT, "MD5")
    with pytest.raises(InvalidSignature):
        verify_signature(auth, COMPACT, secret_keys=[SECRET], algorithms=("SHA256",))


def test_wrong_secret_fails() -> None:
    auth = auth_for(COMPACT, "MD5", key="another")
    with pytest.raises(InvalidSignature):
        verify_signature(auth, COMPACT, secret_keys=[SECRET], algorithms=BOTH)


def test_the_steps_of_verification_that_diagnostics_reports() -> None:
    """verify_signature is made of these; ``flask callbot verify`` reports each one."""
    auth = auth_for(COMPACT, "SHA256")
    assert candidate_algorithms(auth, BOTH) == ["MD5", "SHA256"]
    assert candidate_algorithms(auth_for(COMPACT, "MD5", header=True), BOTH) == ["MD5"]
    with pytest.raises(InvalidSignature, match="algorithm MD5 is not allowed here"):
        candidate_algorithms(auth_for(COMPACT, "MD5", header=True), ("SHA256",))
    assert (auth.fits("MD5"), auth.fits("SHA256")) == (False, True)
    assert auth.signed_with(SECRET, COMPACT, "SHA256")
    lower = AuthHeaders(REQUEST_ID, UUID, CREATE_TS, auth.sign.lower())
    assert lower.signed_with(SECRET, COMPACT, "SHA256")
    assert not auth.signed_with("another", COMPACT, "SHA256")
    assert not auth.signed_with(SECRET, SPACED, "SHA256")
    assert not auth.signed_with(SECRET, COMPACT, "MD5")


def good_headers(**overrides: str) -> dict[str, str]:
    headers = {"requestId": REQUEST_ID, "UUID": UUID, "createts": CREATE_TS, "sign": "A" * 32}
    headers.update(overrides)
    return headers


def test_header_names_are_case_insensitive() -> None:
    auth = parse_auth_headers(good_headers(Algorithm="sha256"))
    assert auth == AuthHeaders(REQUEST_ID, UUID, CREATE_TS, "A" * 32, "SHA256")
    assert auth.request_ts == 1_700_000_000


@pytest.mark.parametrize("missing", ["requestId", "UUID", "createts", "sign"])
def test_missing_or_empty_header(missing: str) -> None:
    headers = good_headers()
    del headers[missing]
    with pytest.raises(MissingAuthHeader):
        parse_auth_headers(headers)
    with pytest.raises(MissingAuthHeader):
        parse_auth_headers(good_headers(**{missing: ""}))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("createts", "17e8"),
        ("createts", "-1700000000"),
        ("createts", " 1700000000"),
        (
            "createts",
            "\uff11\uff17\uff10\uff10",
        ),  # full-width digits are digits to str.isdigit, not to us
        ("createts", "1" * 13),
        ("requestId", "a&b"),
        ("requestId", "a=b"),
        ("requestId", "r" * 129),
        ("requestId", "caf\u00e9"),
        ("UUID", UUID + "&uuid=x"),
        ("UUID", "u" * 65),
        ("UUID", "a\tb"),
        ("sign", "A" * 31),
        ("sign", "A" * 40),
        ("sign", "G" * 32),
        ("Algorithm", "SHA1"),
    ],
)
def test_malformed_headers(name: str, value: str) -> None:
    with pytest.raises(InvalidAuthHeader):
        parse_auth_headers(good_headers(**{name: value}))


def test_repeated_header_is_refused() -> None:
    pairs = [*good_headers().items(), ("requestID", "other")]
    with pytest.raises(InvalidAuthHeader, match="repeated"):
        parse_auth_headers(pairs)
    assert peek_request_id(pairs) is None
    assert peek_request_id(good_headers()) == REQUEST_ID


def test_time_window_is_two_sided() -> None:
    check_timestamp(1000, now=1300, max_age=300, max_future_skew=60)
    check_timestamp(1060, now=1000, max_age=300, max_future_skew=60)
    with pytest.raises(TimestampOutOfWindow, match="old"):
        check_timestamp(999, now=1300, max_age=300, max_future_skew=60)
    with pytest.raises(TimestampOutOfWindow, match="future"):
        check_timestamp(1061, now=1000, max_age=300, max_future_skew=60)


def test_uuid_must_match_exactly() -> None:
    check_uuid(UUID, UUID)
    for other in (UUID.lower(), UUID[:-1], UUID + "x"):
        with pytest.raises(UnknownAccount):
            check_uuid(other, UUID)
