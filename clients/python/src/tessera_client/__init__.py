"""tessera-client: the Python client of tessera, the credential broker for AI agents (docs/sdk.md)."""

from .adapters import HttpxAuth, RequestsAuth
from .broker import Broker
from .credentials import (
    ClientSecret,
    Credentials,
    MutualTls,
    NoCredentials,
    PrivateKeyJwt,
    SpiffeJwt,
    token_from_file,
)
from .errors import (
    ApprovalDenied,
    ApprovalPending,
    BrokerUnavailable,
    CircuitOpen,
    OAuthError,
    TesseraError,
    TokenRejected,
)
from .models import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, Actor, Introspection, TokenResponse
from .resilience import Backoff, CircuitBreaker
from .resource import VerifiedToken, Verifier, bearer
from .revocation import RevocationEvent, RevocationWatch, StatusLists
from .task import Task

__all__ = [
    "Actor",
    "ApprovalDenied",
    "ApprovalPending",
    "Backoff",
    "Broker",
    "BrokerUnavailable",
    "CircuitBreaker",
    "CircuitOpen",
    "ClientSecret",
    "Credentials",
    "HttpxAuth",
    "Introspection",
    "RevocationEvent",
    "RevocationWatch",
    "StatusLists",
    "MutualTls",
    "NoCredentials",
    "OAuthError",
    "PrivateKeyJwt",
    "RequestsAuth",
    "SpiffeJwt",
    "Task",
    "TesseraError",
    "TokenRejected",
    "TokenResponse",
    "TOKEN_TYPE_ACCESS_TOKEN",
    "TOKEN_TYPE_JWT",
    "VerifiedToken",
    "Verifier",
    "bearer",
    "token_from_file",
]
