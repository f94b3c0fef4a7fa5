"""An OpenAPI 3.1 document of the three callback endpoints, generated from the marshmallow schemas.

Needs apispec (``pip install 'flask-callbot[openapi]'``). The document describes what the
receiver accepts, not only what the vendor documents, so a tool testing against it (schemathesis)
finds no false alarms: integers may be digit strings, floats numeric strings, booleans
marshmallow's true/false words; unknown fields are allowed at every level. Every reply, with
its retCodes, comes from the error classes that produce it.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from marshmallow import RAISE, Schema, fields, validate

from .errors import CallbotError, ConfigurationError, RequestRejected
from .events import CallbackKind, TaskStatus
from .routes import ROUTES, find_prefix
from .schemas import (
    FLOAT_STRING,
    Int64,
    NumberCallbackSchema,
    StatusField,
    TaskCallbackSchema,
    Text,
)
from .signing import ALGORITHMS, HEADER_PATTERNS

if TYPE_CHECKING:
    from flask import Flask

#: What to install when apispec is missing.
EXTRA_HINT = "pip install 'flask-callbot[openapi]'"

#: Digit strings that surely fit in 64 bits (the receiver also takes longer ones that fit), in
#: the receiver's own form (:data:`flask_callbot.schemas.INTEGER_STRING`: ASCII, no plus sign).
_INTEGER_STRING = r"^-?[0-9]{1,18}$"
_FLOAT_STRING = f"^(?:{FLOAT_STRING})$"
#: Text fields refuse NUL characters (PostgreSQL cannot store them).
_NO_NUL = "^[^\\u0000]*$"

_HEADERS = {
    "requestID": "A unique id chosen by the sender for this delivery (`requestId` works too). "
    "A redelivery repeats it; the receiver processes each requestID once.",
    "uuid": "The account id from the vendor's console; it must equal `CALLBOT_UUID`.",
    "createTs": "The request time in unix seconds; it must lie within `CALLBOT_MAX_AGE` "
    "before and `CALLBOT_MAX_FUTURE_SKEW` after the receiver's clock.",
    "sign": "Upper-case (any case accepted) hex MD5 or SHA-256 of "
    "`<secret>&body=<raw body>&createTs=<createTs>&requestID=<requestID>&uuid=<uuid>`.",
}
_OPERATIONS = {
    CallbackKind.TASK: ("TaskCallback", "A task's status and statistics changed."),
    CallbackKind.ORDER: ("NumberCallback", "An order (one phone number) is finished."),
    CallbackKind.CALL: ("NumberCallback", "One call attempt finished."),
}
_DESCRIPTION = (
    "The callbacks the NXCloud Callbot v3 platform POSTs to a flask-callbot receiver: task "
    "status and statistics, finished orders, finished call attempts. Every request carries "
    "the `requestID`, `uuid`, `createTs` and `sign` headers; `sign` covers the raw body bytes, "
    "so a client must sign and send the same bytes. Every reply is the JSON envelope "
    "`{retCode, retMsg, responseID}`."
)
_SUCCESS = (
    "Accepted and processed (retCode 0); also a delivery already processed (a duplicate "
    "requestID, no signals again) and a stale task update (recorded, not applied)."
)


class ReplySchema(Schema):
    """The envelope of every reply, in the vendor's retCode vocabulary."""

    class Meta:
        unknown = RAISE  # exactly these three keys: additionalProperties false

    ret_code = fields.Integer(
        data_key="retCode", required=True, metadata={"description": "0 success, else a failure"}
    )
    ret_msg = fields.String(
        data_key="retMsg", required=True, metadata={"description": "What happened, for people"}
    )
    response_id = fields.String(
        data_key="responseID",
        required=True,
        validate=validate.Regexp(r"^[0-9a-f]{32}$"),
        metadata={"description": "A fresh random id for tracing", "pattern": "^[0-9a-f]{32}$"},
    )


def build_openapi(app: Flask | None = None, *, prefix: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the callback routes, as a dict (dump it as JSON).

    The paths carry ``prefix``, or where ``app`` mounted the blueprint, or none. Raises
    :class:`ImportError` naming the extra to install when apispec is missing.
    """
    try:
        from apispec import APISpec  # an optional dependency: imported when asked for
        from apispec.ext.marshmallow import MarshmallowPlugin
    except ImportError as exc:
        raise ImportError(f"the OpenAPI document needs apispec: {EXTRA_HINT}") from exc
    if prefix is None:
        prefix = find_prefix(app) if app is not None else ""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="NXCloud Callbot v3 callbacks (flask-callbot receiver)",
        version=_package_version(),
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": _DESCRIPTION},
    )
    if plugin.converter is None:  # set by APISpec(plugins=...); a newer apispec may differ
        raise RuntimeError("apispec did not initialise its marshmallow converter")
    plugin.converter.add_attribute_function(_lenient_scalars)  # type: ignore[no-untyped-call]
    spec.components.schema("TaskCallback", schema=TaskCallbackSchema)
    spec.components.schema("NumberCallback", schema=NumberCallbackSchema)
    spec.components.schema("Reply", schema=ReplySchema)
    for name, pattern in HEADER_PATTERNS.items():
        schema = {"type": "string", "pattern": f"^(?:{pattern})$"}
        spec.components.parameter(
            name, "header", {"required": True, "description": _HEADERS[name], "schema": schema}
        )
    names = "|".join(_any_case(name) for name in ALGORITHMS)
    spec.components.parameter(
        "algorithm",
        "header",
        {
            "required": False,
            "description": "The digest of `sign` (case-insensitive); when absent, every digest "
            "in `CALLBOT_SIGN_ALGORITHMS` is tried.",
            "schema": {"type": "string", "pattern": f"^(?:{names})$"},
        },
    )
    for status, description, codes in _replies():
        spec.components.response(f"Status{status}", _response(description, codes))
    responses = {str(status): f"Status{status}" for status, _, _ in _replies()}
    for kind, route in ROUTES.items():
        body_schema, summary = _OPERATIONS[kind]
        spec.path(
            path=prefix + route,
            operations={
                "post": {
                    "operationId": f"{kind.value}Callback",
                    "summary": summary,
                    "description": f"The vendor's {kind.value}Callback. The body is verified "
                    "as received (raw bytes), then decoded as a UTF-8 JSON object (no NaN, no "
                    "duplicate keys) and validated.",
                    "parameters": [*HEADER_PATTERNS, "algorithm"],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": body_schema}},
                    },
                    "responses": responses,
                }
            },
        )
    return spec.to_dict()


def _package_version() -> str:
    try:
        return version("flask-callbot")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _any_case(name: str) -> str:
    """``MD5`` → ``[Mm][Dd]5``: JSON Schema patterns have no case-insensitive flag."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in name)


def _error_classes(cls: type[CallbotError] = CallbotError) -> Iterator[type[CallbotError]]:
    for sub in cls.__subclasses__():
        if sub not in (ConfigurationError, RequestRejected):  # raised at setup / a base
            yield sub
        yield from _error_classes(sub)


def _replies() -> list[tuple[int, str, list[int]]]:
    """(HTTP status, description, retCodes) of every reply the receiver gives."""
    by_status: dict[int, list[type[CallbotError]]] = {}
    for cls in _error_classes():
        by_status.setdefault(cls.http_status, []).append(cls)
    replies = [(200, _SUCCESS, [0])]
    for status, classes in sorted(by_status.items()):
        classes.sort(key=lambda cls: (cls.ret_code, cls.reason))
        lines = [f"- retCode {cls.ret_code} ({cls.reason}): {_summary(cls)}" for cls in classes]
        replies.append((status, "\n".join(lines), sorted({cls.ret_code for cls in classes})))
    return replies


def _summary(cls: type[CallbotError]) -> str:
    """The first line of the class's docstring, in Markdown (OpenAPI descriptions are)."""
    return (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`")


def _response(description: str, codes: list[int]) -> dict[str, Any]:
    schema = {
        "allOf": [{"$ref": "#/components/schemas/Reply"}],
        "properties": {"retCode": {"enum": codes}},
    }
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _lenient_scalars(self: Any, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
    """Describe the scalars as the receiver reads them (apispec attribute function)."""
    nullable: list[Any] = [None] if field.allow_none else []
    types = ["null"] if field.allow_none else []
    if isinstance(field, Int64):
        extra = {"type": ["integer", "string", *types], "pattern": _INTEGER_STRING}
        if isinstance(field, StatusField):
            known = ", ".join(f"{int(s)} {s.name}" for s in TaskStatus)
            extra["description"] = f"{known}; other values are accepted and kept as integers"
        return extra
    if isinstance(field, fields.Float):
        return {"type": ["number", "string", *types], "pattern": _FLOAT_STRING}
    if isinstance(field, fields.Boolean):
        words = field.truthy | field.falsy
        numbers = sorted(w for w in words if isinstance(w, int))
        strings = sorted(w for w in words if isinstance(w, str))
        return {
            "type": ["boolean", "integer", "string", *types],
            "enum": [True, False, *nullable, *numbers, *strings],
        }
    if isinstance(field, Text):
        return {"pattern": _NO_NUL}
    return {}
