"""What the client raises. Every error names the OAuth error code the broker answered (RFC 6749 §5.2), and
none carries a token or a secret."""

from __future__ import annotations

from typing import Optional


class TesseraError(Exception):
    """A request to the broker failed. `error` is the OAuth error code (or a client-side code such as
    `unavailable`), `description` the broker's text, `status` the HTTP status when there was an answer."""

    def __init__(self, error: str, description: str = "", status: Optional[int] = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class OAuthError(TesseraError):
    """The broker refused the request (`invalid_scope`, `invalid_grant`, `invalid_target`, …). Not retried:
    asking again gets the same answer."""


class BrokerUnavailable(TesseraError):
    """The broker could not be reached, or answered 503/429, on every attempt the retry budget allowed."""


class CircuitOpen(BrokerUnavailable):
    """The circuit breaker is open after repeated failures: no request was sent. It half-opens after its
    cool-down, and the next call probes the broker."""


class ApprovalPending(OAuthError):
    """The exchange needs a human's approval (`authorization_pending`): retry the same exchange once
    `approval_uri` reports `approved` (see `Broker.wait_for_approval`)."""

    def __init__(self, description: str, approval_id: str, approval_uri: str, interval: int, status: int) -> None:
        super().__init__("authorization_pending", description, status)
        self.approval_id = approval_id
        self.approval_uri = approval_uri
        self.interval = interval


class ApprovalDenied(OAuthError):
    """A human denied the exchange (`access_denied`), or the approval expired."""


class TokenRejected(Exception):
    """A resource server refused a bearer token: `status` 401 (`invalid_token`: missing, malformed,
    expired, revoked, wrong audience) or 403 (`insufficient_scope`)."""

    def __init__(self, status: int, error: str, description: str, scope: str = "") -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope

    def www_authenticate(self) -> str:
        """The RFC 6750 §3 challenge for this refusal."""
        value = f'Bearer error="{self.error}", error_description="{self.description}"'
        if self.scope:
            value += f', scope="{self.scope}"'
        return value
