"""Model ids of the OpenAI API: the base model, `<model>@<version>` for every adapter version
this server can serve, and the aliases a request may use.

`<model>` alone is routed (the stable version, or the canary for a share of sessions), as the
websocket is; `<model>@<version>` pins a version (`@base`: the base weights). Aliases for
`<model>`: `rewardloop` and the REWARDLOOP_MODEL name (`smollm2`, `tiny-random`, a folder).
"""
from __future__ import annotations

import asyncio

from core.versions import is_base, sort_key
from service.api.common import ApiError
from service.api.openai_schema import ModelCard, ModelList
from service.serving.chat import TurnRefused


def aliases(runtime) -> set[str]:
    return {runtime.loaded.model_id, "rewardloop", str(runtime.settings.model)}


def _not_found(name: str, runtime, why: str) -> ApiError:
    return ApiError(404, "model_not_found", f"model {name!r} {why}; this server serves "
                    f"{runtime.loaded.model_id!r} (routed) and {runtime.loaded.model_id!r}@<version> for the versions "
                    "in GET /v1/models", "model")


def resolve(runtime, name: str, adapter_version: str | None) -> str | None:
    """The version a request pins (None = route it), or 404 model_not_found."""
    base, _, version = name.partition("@")
    if base not in aliases(runtime):
        raise _not_found(name, runtime, "does not exist")
    if version and adapter_version and version.removeprefix("v") != adapter_version.removeprefix("v"):
        raise ApiError(400, "bad_value", f"model {name!r} and adapter_version {adapter_version!r} disagree: "
                       "send one of them", "adapter_version")
    pinned = version or adapter_version
    if pinned is None:
        return None
    try:
        return runtime.chat.check_pinned(pinned)
    except TurnRefused as err:
        raise _not_found(name if version else f"{name}@{pinned}", runtime, f"is not loaded here ({err.message})") \
            from None


async def listing(runtime) -> ModelList:
    """The routed base id, then `@base`, then every adapter version resident on this server."""
    state = await asyncio.to_thread(lambda: runtime.registry().state())  # a blocking client: off the loop
    mid, routing = runtime.loaded.model_id, runtime.watcher.routing
    versions = state["versions"]

    def role(v: str) -> str:
        if v == routing.stable:
            return "stable"
        if v == routing.canary:
            return "canary"
        return "rollback_target" if v == state["rollback_target"] else "resident"

    def card(v: str) -> ModelCard:
        entry = versions.get(v, {})
        parent = entry.get("parent")
        return ModelCard(id=f"{mid}@{v}", created=int(float(entry.get("created") or 0)), root=mid,
                         parent=None if is_base(v) else f"{mid}@{'base' if is_base(parent) else parent}",
                         rewardloop={"version": v, "role": role(v), "state": entry.get("state", "published"),
                                     "samples": entry.get("samples")})

    routed = ModelCard(id=mid, created=0, root=mid, parent=None,
                       rewardloop={"version": "routed", "role": "routed", "stable": routing.stable,
                                   "canary": routing.canary or None, "canary_share": routing.canary_share})
    resident = sorted((v for v in runtime.watcher.loaded() if not is_base(v)), key=sort_key)
    return ModelList(data=[routed, card("base"), *(card(v) for v in resident)])


async def card_for(runtime, model_id: str) -> ModelCard:
    resolve(runtime, model_id, None)   # 404 for what no request could use
    base, _, version = model_id.partition("@")
    models = (await listing(runtime)).data
    want = f"{runtime.loaded.model_id}@{runtime.chat.check_pinned(version)}" if version else runtime.loaded.model_id
    for m in models:
        if m.id == want:
            return m
    raise _not_found(model_id, runtime, "is not loaded here")
