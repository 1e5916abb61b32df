"""Task scopes: every credential of a task dies with it."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, List, Optional, Type

from .credentials import SubjectToken
from .models import TokenResponse

if TYPE_CHECKING:
    from .adapters import HttpxAuth, RequestsAuth
    from .broker import Broker


class Task:
    """Tokens requested through a task carry its `task_id` (and `purpose`, `session_id`). Leaving the
    `with` / `async with` block — normally or by an exception — revokes the task at the broker: each token
    the task's id was bound to, and each token derived from them, is inactive at once. A failure to revoke
    is raised (after the client's retries), never swallowed: the caller must know the task's tokens live on.
    """

    def __init__(
        self,
        broker: "Broker",
        task_id: str,
        *,
        purpose: str = "",
        session_id: str = "",
        subject_token: Optional[SubjectToken] = None,
    ) -> None:
        if not task_id:
            raise ValueError("a task needs an id")
        self.broker = broker
        self.task_id = task_id
        self.purpose = purpose
        self.session_id = session_id
        self.subject_token = subject_token
        self.revoked = False
        self.tokens: List[TokenResponse] = []

    def _args(self, kwargs: Any) -> Any:
        kwargs.setdefault("subject_token", self.subject_token)
        kwargs["task_id"] = self.task_id
        kwargs.setdefault("purpose", self.purpose)
        kwargs.setdefault("session_id", self.session_id)
        return kwargs

    def exchange(self, audience: Any = None, scope: Any = "", **kwargs: Any) -> TokenResponse:
        """`Broker.exchange`, bound to this task."""
        token = self.broker.exchange(audience, scope, **self._args(kwargs))
        self.tokens.append(token)
        return token

    async def aexchange(self, audience: Any = None, scope: Any = "", **kwargs: Any) -> TokenResponse:
        token = await self.broker.aexchange(audience, scope, **self._args(kwargs))
        self.tokens.append(token)
        return token

    def task_token(self, scope: Any = "", **kwargs: Any) -> TokenResponse:
        """A task token: the orchestrator's ceiling for this task, with audience the broker itself. It can be
        exchanged again (as `subject_token`) for any catalogued audience within its scopes, e.g. for a
        sub-agent with the sub-agent's assertion as `actor_token`."""
        return self.exchange(self.broker.issuer, scope, **kwargs)

    def httpx_auth(self, audience: str, scope: Any = "", **kwargs: Any) -> "HttpxAuth":
        """An `httpx.Auth` attaching this task's token for `audience`."""
        from .adapters import HttpxAuth

        return HttpxAuth(self.broker, audience, scope, **self._args(kwargs))

    def requests_auth(self, audience: str, scope: Any = "", **kwargs: Any) -> "RequestsAuth":
        """A `requests` auth attaching this task's token for `audience`."""
        from .adapters import RequestsAuth

        return RequestsAuth(self.broker, audience, scope, **self._args(kwargs))

    def revoke(self, reason: str = "task ended") -> None:
        """Revokes the task now (the block's exit does it too; twice is harmless)."""
        self.broker.revoke(task_id=self.task_id, reason=reason)
        self.revoked = True

    async def arevoke(self, reason: str = "task ended") -> None:
        await self.broker.arevoke(task_id=self.task_id, reason=reason)
        self.revoked = True

    @staticmethod
    def _reason(exc_type: Optional[Type[BaseException]]) -> str:
        return "task ended" if exc_type is None else f"task failed: {exc_type.__name__}"

    def __enter__(self) -> "Task":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.revoke(self._reason(exc_type))

    async def __aenter__(self) -> "Task":
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.arevoke(self._reason(exc_type))
