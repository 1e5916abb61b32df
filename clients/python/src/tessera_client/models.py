"""Typed answers: the RFC 8693 exchange response and the RFC 7662 introspection response."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True, repr=False)
class TokenResponse:
    """RFC 8693 §2.2.1. `expires_at` is when it expires, by this process's clock (`time.time()`)."""

    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int
    scope: str
    authorization_details: Optional[List[Dict[str, Any]]] = None
    expires_at: float = 0.0

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "TokenResponse":
        expires_in = int(body.get("expires_in", 0))
        return cls(
            access_token=str(body["access_token"]),
            issued_token_type=str(body.get("issued_token_type", "")),
            token_type=str(body.get("token_type", "Bearer")),
            expires_in=expires_in,
            scope=str(body.get("scope", "")),
            authorization_details=body.get("authorization_details"),
            expires_at=time.time() + expires_in,
        )

    @property
    def scopes(self) -> List[str]:
        return self.scope.split()

    def remaining(self) -> float:
        """Seconds of life left."""
        return self.expires_at - time.time()

    def __repr__(self) -> str:  # never the token itself
        return f"TokenResponse(token_type={self.token_type!r}, scope={self.scope!r}, expires_in={self.expires_in})"


@dataclass(frozen=True)
class Actor:
    """One link of an RFC 8693 §4.1 `act` chain: who acts, and (nested) for whom it acts in turn."""

    sub: str
    iss: Optional[str] = None
    act: Optional["Actor"] = None

    @classmethod
    def from_json(cls, value: Optional[Dict[str, Any]]) -> Optional["Actor"]:
        if not value:
            return None
        return cls(sub=str(value.get("sub", "")), iss=value.get("iss"), act=cls.from_json(value.get("act")))

    def chain(self) -> List[str]:
        """The actors' `sub`, the current actor first."""
        out: List[str] = []
        a: Optional[Actor] = self
        while a is not None:
            out.append(a.sub)
            a = a.act
        return out


@dataclass(frozen=True, repr=False)
class Introspection:
    """RFC 7662 §2.2, plus tessera's `act`, `task_id`, `session_id` and `cnf`. An inactive token has
    `active == False` and nothing else."""

    active: bool
    scope: str = ""
    client_id: str = ""
    sub: str = ""
    aud: Any = None
    iss: str = ""
    exp: int = 0
    iat: int = 0
    nbf: int = 0
    jti: str = ""
    task_id: str = ""
    session_id: str = ""
    act: Optional[Actor] = None
    cnf: Optional[Dict[str, str]] = None
    authorization_details: Optional[List[Dict[str, Any]]] = None
    raw: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Introspection":
        if not body.get("active"):
            return cls(active=False, raw=body)
        return cls(
            active=True,
            scope=str(body.get("scope", "")),
            client_id=str(body.get("client_id", "")),
            sub=str(body.get("sub", "")),
            aud=body.get("aud"),
            iss=str(body.get("iss", "")),
            exp=int(body.get("exp", 0)),
            iat=int(body.get("iat", 0)),
            nbf=int(body.get("nbf", 0)),
            jti=str(body.get("jti", "")),
            task_id=str(body.get("task_id") or ""),
            session_id=str(body.get("session_id") or ""),
            act=Actor.from_json(body.get("act")),
            cnf=body.get("cnf"),
            authorization_details=body.get("authorization_details"),
            raw=body,
        )

    @property
    def scopes(self) -> List[str]:
        return self.scope.split()

    def __repr__(self) -> str:
        return f"Introspection(active={self.active}, sub={self.sub!r}, scope={self.scope!r}, task_id={self.task_id!r})"
