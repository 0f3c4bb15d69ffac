"""The admin API: API keys and quotas (a key with the ``admin`` scope required)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ponder.budget.quota import Limit, Scope
from ponder.errors import Forbidden, InvalidRequest, PonderError
from ponder.ledger.store import QuotaStatus, Store
from ponder.server.admission import Admission, offload
from ponder.server.parsing import parse_model
from ponder.server.protocol import ErrorResult, KeyCreate, QuotaSet, error_result

__all__ = ["AdminAPI", "NotFound", "quota_status_json"]


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


def quota_status_json(q: QuotaStatus) -> dict[str, Any]:
    return {
        **dataclasses.asdict(q.limit),
        "counted_for": q.subject,
        "used": q.used,
        "reserved": q.reserved,
        "resets_at": None if q.limit.window == "request" else q.resets_at,
    }


class AdminAPI:
    """Handlers of ``/v1/admin/keys`` and ``/v1/admin/quotas``; errors are values."""

    def __init__(self, store: Store | None, admission: Admission) -> None:
        self.store = store
        self.admission = admission

    async def require_admin(
        self,
        headers: Mapping[str, str] | None,
        *,
        needs: str = "the admin API",
        missing: str = "keys or quotas to manage",
    ) -> Store:
        """The store, for a caller with the admin scope (``needs``/``missing`` word the errors)."""
        if self.store is None:
            raise InvalidRequest(
                f"this gateway runs without a store (server.ledger = false): there are no {missing}"
            )
        caller = await self.admission.authenticate(headers)
        if caller.key_id is None or not caller.may("admin"):
            raise Forbidden(
                f"{needs} needs a key with the 'admin' scope; create one with "
                "`ponder keys create --user NAME --scope admin`"
            )
        return self.store

    async def create_key(
        self, body: Any, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            req = parse_model(KeyCreate, body)
            record, secret = await offload(
                store, store.create_key, req.user, team=req.team, scopes=req.scopes, name=req.name
            )
        except PonderError as exc:
            return error_result(exc)
        return {**record.public(), "key": secret}

    async def list_keys(
        self, headers: Mapping[str, str] | None, *, include_revoked: bool = False
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            keys = await offload(store, store.list_keys, include_revoked=include_revoked)
        except PonderError as exc:
            return error_result(exc)
        return {"object": "list", "data": [k.public() for k in keys]}

    async def revoke_key(
        self, key_id: str, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            if not await offload(store, store.revoke_key, key_id):
                raise NotFound(
                    f"no active key with id {key_id!r}; list keys with GET /v1/admin/keys"
                )
        except PonderError as exc:
            return error_result(exc)
        return {"id": key_id, "revoked": True}

    async def set_quota(
        self, body: Any, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            q = parse_model(QuotaSet, body)
            if q.limit is None:
                removed = await offload(
                    store, store.delete_limit, q.scope, q.subject, q.metric, q.window
                )
                return {**q.model_dump(), "removed": removed}
            await offload(
                store, store.set_limit, Limit(q.scope, q.subject, q.metric, q.window, q.limit)
            )
        except PonderError as exc:
            return error_result(exc)
        return q.model_dump()

    async def show_quota(
        self, headers: Mapping[str, str] | None, subjects: Mapping[Scope, str | None]
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            if any(subjects.values()):
                rows = await offload(store, store.status, subjects)
                data = [quota_status_json(r) for r in rows]
            else:
                limits = await offload(store, store.limits)
                data = [dataclasses.asdict(lim) for lim in limits]
        except PonderError as exc:
            return error_result(exc)
        return {"object": "list", "data": data}
