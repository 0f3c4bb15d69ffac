"""Who is calling: API key -> caller (key, user, team, session, scopes).

Keys arrive as ``Authorization: Bearer pk-...`` (what OpenAI clients send) or
``x-api-key``; the session id as ``x-ponder-session``. Auth is enforced when
``server.require_auth`` is set or once any key exists; before that every
request is an anonymous caller (any key sent is ignored), so a fresh
``ponder serve`` needs no setup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ponder.budget.quota import Scope
from ponder.errors import InvalidRequest, Unauthorized
from ponder.ledger.store import KEY_PREFIX, Store

__all__ = ["ANONYMOUS_SCOPES", "SESSION_HEADER", "Caller", "Authenticator"]

SESSION_HEADER = "x-ponder-session"
ANONYMOUS_SCOPES = frozenset({"reasoning", "strategies"})
_MAX_SESSION = 200


@dataclass(frozen=True)
class Caller:
    key_id: str | None = None
    user: str | None = None
    team: str | None = None
    session: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def label(self) -> str:
        """The caller in metrics and logs: the key id (never the secret)."""
        return self.key_id or "anonymous"

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def subjects(self) -> dict[Scope, str | None]:
        return {"key": self.key_id, "user": self.user, "team": self.team, "session": self.session}


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items()}


def _secret(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "").strip()
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "the Authorization header must be 'Bearer <api key>'; create a key with "
                "`ponder keys create --user NAME`"
            )
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def _session(headers: dict[str, str]) -> str | None:
    session = headers.get(SESSION_HEADER)
    if session is None:
        return None
    session = session.strip()
    if not session or len(session) > _MAX_SESSION or not session.isprintable():
        raise InvalidRequest(
            f"the {SESSION_HEADER} header must be 1-{_MAX_SESSION} printable characters",
            param=SESSION_HEADER,
        )
    return session


class Authenticator:
    """Turns request headers into a :class:`Caller`, or raises :class:`Unauthorized`."""

    def __init__(self, store: Store | None, *, require_auth: bool = False) -> None:
        if require_auth and store is None:
            raise InvalidRequest(
                "server.require_auth needs the key store; enable server.ledger or drop require_auth"
            )
        self.store = store
        self.require_auth = require_auth
        # Once a key exists auth stays on for this process (revoking the last key
        # must not silently open the gateway).
        self._keys_seen = False

    def auth_enabled(self) -> bool:
        if self.require_auth or self._keys_seen:
            return True
        if self.store is not None and self.store.has_keys():
            self._keys_seen = True
        return self._keys_seen

    def authenticate(
        self,
        headers: Mapping[str, str] | None,
        *,
        anonymous_scopes: frozenset[str] = ANONYMOUS_SCOPES,
    ) -> Caller:
        """Blocking (it may read the store): call it from a worker thread in async code."""
        h = _lower(headers)
        session = _session(h)
        if not self.auth_enabled():
            # Open gateway: whatever key a client sends (OpenAI clients always send
            # one, e.g. "unused") is ignored.
            return Caller(session=session, scopes=anonymous_scopes)
        secret = _secret(h)
        if secret is None:
            raise Unauthorized(
                "this gateway requires an API key: send 'Authorization: Bearer <key>' "
                "(ask an admin for one, or create it with `ponder keys create --user NAME`)"
            )
        assert self.store is not None  # auth is only enabled with a store
        record = self.store.lookup_key(secret) if secret.startswith(KEY_PREFIX) else None
        if record is None:
            # Say nothing about the key itself: it is a secret and must not be echoed or logged.
            raise Unauthorized(
                "the API key is not valid (unknown or revoked); check it or ask an admin for a "
                "new one"
            )
        self._keys_seen = True
        return Caller(
            key_id=record.id,
            user=record.user,
            team=record.team,
            session=session,
            scopes=record.scopes,
        )
