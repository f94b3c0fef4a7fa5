"""The one exception family: each class carries the HTTP status and vendor retCode it answers."""

from __future__ import annotations


class CallbotError(Exception):
    """Base of every flask_callbot error; a request that raises one is answered with its codes."""

    http_status = 500
    ret_code = 5001
    #: Short machine-friendly reason sent with ``callback_rejected``.
    reason = "internal-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reply_message(self) -> str:
        """The reply's retMsg: the message, unless it may carry the host's own text."""
        return self.message


class ConfigurationError(CallbotError):
    """The app's ``CALLBOT_*`` configuration is missing or wrong; raised at registration."""

    reason = "configuration"


class RequestRejected(CallbotError):
    """A refusal of the request itself (auth, format, size): not stored; ``callback_rejected``."""

    http_status, ret_code, reason = 400, 4, "rejected"


class MissingAuthHeader(RequestRejected):
    """A required authentication header is absent or empty."""

    http_status, ret_code, reason = 401, 6001, "missing-auth-header"


class InvalidAuthHeader(RequestRejected):
    """An authentication header does not have the strict expected form."""

    http_status, ret_code, reason = 401, 6, "malformed-auth-header"


class TimestampOutOfWindow(RequestRejected):
    """``createTs`` is older than ``CALLBOT_MAX_AGE`` or further ahead than the allowed skew."""

    http_status, ret_code, reason = 401, 6, "timestamp-out-of-window"


class UnknownAccount(RequestRejected):
    """A well-formed ``uuid`` header that is not the configured account."""

    http_status, ret_code, reason = 401, 6002, "unknown-account"


class InvalidSignature(RequestRejected):
    """The ``sign`` header matches no configured secret and algorithm."""

    http_status, ret_code, reason = 401, 6, "bad-signature"


class PayloadTooLarge(RequestRejected):
    """The body is over ``CALLBOT_MAX_CONTENT_LENGTH``; refused before it is read whole."""

    http_status, ret_code, reason = 413, 4, "payload-too-large"


class MalformedBody(RequestRejected):
    """The body is not UTF-8, not JSON, or not a JSON object."""

    http_status, ret_code, reason = 400, 3, "malformed-body"


class MissingField(RequestRejected):
    """A required payload field is absent (or null); the message names the fields."""

    http_status, ret_code, reason = 400, 2, "missing-field"


class InvalidField(RequestRejected):
    """A payload field has the wrong type or value; the message names the fields."""

    http_status, ret_code, reason = 400, 4, "invalid-field"


class RequestIdReused(RequestRejected):
    """An authentic request reuses a recorded requestID with a different body."""

    http_status, ret_code, reason = 409, 4, "request-id-reused"


class IncompleteBody(CallbotError):
    """The client stopped sending before the whole body arrived (it disconnected, or sent
    nothing more for ``CALLBOT_BODY_TIMEOUT``): nothing was authenticated, stored or signalled.
    Answered like a body that is not JSON, if anyone is still listening."""

    http_status, ret_code, reason = 400, 3, "incomplete-body"


class DeliveryInProgress(CallbotError):
    """The same requestID is being processed by another worker now; the sender retries later."""

    http_status, ret_code, reason = 409, 7, "in-progress"


class ReceiverFailed(CallbotError):
    """A signal receiver raised; the delivery is kept as failed and is re-run on redelivery.

    The message quotes the receivers' exceptions: the host's text, which may quote the event or
    name its systems. It goes to the store's ``error`` and the log, never to the vendor.
    """

    http_status, ret_code, reason = 500, 5001, "receiver-failed"

    @property
    def reply_message(self) -> str:
        return "a receiver raised; the delivery is kept as failed"


class StoreUnavailable(CallbotError):
    """The database could not be reached; nothing was acknowledged."""

    http_status, ret_code, reason = 503, 7, "store-unavailable"


class QueueUnavailable(CallbotError):
    """Celery dispatch: the delivery was recorded but could not be enqueued; not acknowledged."""

    http_status, ret_code, reason = 503, 7, "queue-unavailable"
