"""The adapter registry: version folders on disk, pointers in Redis.

Disk: DATA_DIR/adapters/v{N}/ is a standard PEFT folder (adapter_config.json,
adapter_model.safetensors; PeftModel.from_pretrained loads it) plus manifest.json (version,
parent, sha256 of the weights, base model id, training stats, reward config hash, samples
used, created time, state published|rejected and reason, resolved config). A version is
written into a temporary sibling folder and renamed into place.

Redis (this module is the only writer): hash `{prefix}adapters` with
  stable           version every session gets ('base' = no adapter)
  canary           version a share of sessions gets ('' = none)
  canary_share     that share, 0..1
  rollback_target  where `rollback` goes (the previous stable)
  next_version     the last version number given out
  versions         JSON {"N": {version, state, parent, sha256, path, created, reason, samples, probe?}}
Every change also appends to the `{prefix}adapters:history` stream (event, version, who, why)
and publishes a JSON notice on `{prefix}adapters:changed`.

A learner run commits in one Lua script that first checks the run still holds its lock
(fencing token): a run whose lock expired can never publish, and nothing in Redis changes
before that commit.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import redis

from core.adapter_format import MANIFEST_FILE, WEIGHTS_FILE, sha256_file
from core.keys import Keys
from core.manifest import AdapterManifest, ManifestInvalid
from core.versions import folder_name, is_base
from core.versions import sort_key as version_sort_key

log = logging.getLogger(__name__)


# KEYS: lock, adapters, history, cursor, pairs cursor
# ARGV: token, version, entry JSON, mode (canary|stable|reject), canary_share, cursor ('' keeps),
#       pairs cursor ('' keeps), channel, by, reason, now
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, 'the run no longer holds the learner lock'} end
local last = tonumber(redis.call('HGET', KEYS[2], 'next_version') or '0')
if last + 1 ~= tonumber(ARGV[2]) then return {0, 'version ' .. ARGV[2] .. ' was taken meanwhile'} end
local versions = cjson.decode(redis.call('HGET', KEYS[2], 'versions') or '{}')
versions[ARGV[2]] = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[2], 'versions', cjson.encode(versions), 'next_version', ARGV[2])
local stable = redis.call('HGET', KEYS[2], 'stable') or 'base'
local canary = redis.call('HGET', KEYS[2], 'canary') or ''
local share = redis.call('HGET', KEYS[2], 'canary_share') or '0'
local event = 'reject'
if ARGV[4] == 'keep' then event = 'import' end  -- registered, pointers unchanged (adapters import)
if ARGV[4] == 'canary' then
  canary = ARGV[2]; share = ARGV[5]; event = 'publish'
  redis.call('HSET', KEYS[2], 'stable', stable, 'canary', canary, 'canary_share', share)
elseif ARGV[4] == 'stable' then
  redis.call('HSET', KEYS[2], 'stable', ARGV[2], 'canary', '', 'rollback_target', stable)
  stable = ARGV[2]; canary = ''; event = 'publish'
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[4], ARGV[6]) end
if ARGV[7] ~= '' then redis.call('SET', KEYS[5], ARGV[7]) end
redis.call('XADD', KEYS[3], '*', 'event', event, 'version', ARGV[2], 'stable', stable, 'canary', canary,
           'canary_share', share, 'by', ARGV[9], 'reason', ARGV[10], 'at', ARGV[11])
local notice = cjson.encode({event = event, version = ARGV[2], stable = stable, canary = canary,
                             canary_share = tonumber(share), by = ARGV[9], reason = ARGV[10], at = tonumber(ARGV[11])})
if event == 'publish' then redis.call('PUBLISH', ARGV[8], notice) end
return {1, notice}
"""


class RegistryError(RuntimeError):
    pass


def found_worse(verdict: dict) -> bool:
    """Whether a live-comparison verdict (the JSON worker/ops keeps per version in `ops_verdicts`)
    says the version serves worse than its baseline: `worse` is true, an alarm was raised, or the
    decision was to roll it back. Pure."""
    return bool(verdict.get("worse") or verdict.get("alarm")) or verdict.get("decision") == "rollback"


class Registry:
    def __init__(self, r: redis.Redis, keys: Keys, data_dir: Path):
        self.r = r  # decode_responses=True
        self.k = keys
        self.root = Path(data_dir) / "adapters"
        self._commit = r.register_script(_COMMIT)

    # --- reading ------------------------------------------------------------------------
    def state(self) -> dict:
        h = self.r.hgetall(self.k.adapters)
        return {"stable": h.get("stable", "base"), "canary": h.get("canary", ""),
                "canary_share": float(h.get("canary_share", 0) or 0),
                "rollback_target": h.get("rollback_target", ""),
                "next_version": int(h.get("next_version", 0) or 0),
                "versions": json.loads(h.get("versions", "{}") or "{}")}

    def version_dir(self, version: int | str) -> Path:
        return self.root / folder_name(version)

    def manifest(self, version: int | str) -> AdapterManifest:
        path = self.version_dir(version) / MANIFEST_FILE
        if not path.exists():
            raise RegistryError(f"version {version} has no folder at {path.parent}; see `rewardloop adapters list`")
        return self.manifest_of(path.parent)

    @staticmethod
    def manifest_of(folder: Path) -> AdapterManifest:
        path = Path(folder) / MANIFEST_FILE
        try:
            return AdapterManifest.from_json(path.read_text())
        except ManifestInvalid as exc:
            raise RegistryError(f"{path}: {exc}") from None

    def stable_dir(self) -> tuple[str, Path | None]:
        """(stable version, its folder) -- folder None when the stable is the base model."""
        return self._folder_of(self.state()["stable"], "stable")

    def _folder_of(self, version: str, role: str) -> tuple[str, Path | None]:
        if is_base(version):
            return "base", None
        folder = self.version_dir(version)
        if not (folder / WEIGHTS_FILE).exists():
            raise RegistryError(f"{role} version {version} has no weights at {folder}")
        return version, folder

    def verdict(self, version: str) -> dict:
        """The live comparison's last verdict on `version` (worker/ops writes `ops_verdicts`), {} if none."""
        raw = self.r.hget(self.k.ops_verdicts, version)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def training_parent(self) -> tuple[str, Path | None, str]:
        """(version, its folder or None for base, why) a learner run continues from: the newest
        version that serves people -- the canary, unless the live comparison found it worse
        (`found_worse`), else the stable. Versions compound this way at low traffic: a canary
        that is not (yet) judged is continued from, and its own replies are on-policy data."""
        st = self.state()
        canary = st["canary"]
        if canary and not is_base(canary):
            verdict = self.verdict(canary)
            if found_worse(verdict):
                version, folder = self.stable_dir()
                return version, folder, (f"canary {canary} was found worse by the live comparison "
                                         f"({verdict.get('message') or verdict.get('action') or 'alarm'}): "
                                         f"continuing from the stable {version}")
            version, folder = self._folder_of(canary, "canary")
            return version, folder, f"the canary {canary} (serves {st['canary_share']:.0%} of sessions, not found worse)"
        version, folder = self.stable_dir()
        return version, folder, f"the stable {version} (no canary)"

    def history(self, count: int = 20) -> list[dict]:
        return [dict(fields, id=sid) for sid, fields in self.r.xrevrange(self.k.adapter_history, count=count)]

    # --- writing a version (learner runs) ----------------------------------------------
    def clean_orphans(self) -> list[str]:
        """Remove temp folders and version folders Redis does not know (a run killed between the
        rename and the commit). Call only while holding the learner lock."""
        if not self.root.exists():
            return []
        known = set(self.state()["versions"])
        removed = []
        for child in self.root.iterdir():
            orphan = child.name.startswith(".tmp-") or (child.name.startswith("v") and child.name[1:].isdigit()
                                                        and child.name[1:] not in known)
            if orphan and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
        return removed

    def stage(self, model, manifest: AdapterManifest) -> Path:
        """Save the adapter and its manifest into a temp folder; return it (sha256 filled in)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            model.save_pretrained(str(tmp))
            manifest = dataclasses.replace(manifest, sha256=sha256_file(tmp / WEIGHTS_FILE))
            (tmp / MANIFEST_FILE).write_text(manifest.to_json())
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            # safetensors reports ENOSPC as its own error type with the OS message inside
            if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
                log.error("adapter v%s not written: disk full under %s (%s); nothing was published, the "
                          "registry is unchanged -- free space and the next run publishes", manifest.version,
                          self.root, exc)
                raise OSError(errno.ENOSPC, f"no space left under {self.root} for adapter "
                              f"v{manifest.version}") from exc
            raise
        return tmp

    def commit(self, staged: Path, manifest: AdapterManifest, lock_token: str, mode: str, canary_share: float, *,
               cursor: str | None, pairs_cursor: str | None, by: str) -> tuple[bool, str]:
        """Rename the staged folder to v{N} and record it in Redis if the lock still holds the
        token. mode: canary | stable | reject | keep (registered only: `adapters import` without
        --publish). (False, why) leaves Redis and disk as they were."""
        version = manifest.version
        dest = self.version_dir(version)
        if dest.exists():
            shutil.rmtree(staged, ignore_errors=True)
            return False, f"{dest} exists already"
        os.rename(staged, dest)
        entry = manifest.registry_entry(str(dest))
        try:
            ok, msg = self._commit(
                keys=[self.k.learn_lock, self.k.adapters, self.k.adapter_history, self.k.learn_cursor,
                      self.k.learn_pairs_cursor],
                args=[lock_token, version, json.dumps(entry), mode, repr(float(canary_share)), cursor or "",
                      pairs_cursor or "", self.k.adapters_changed, by, manifest.reason,
                      repr(time.time())])
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        if not ok:
            shutil.rmtree(dest, ignore_errors=True)
        return bool(ok), msg

    # --- moving pointers (operators) -----------------------------------------------------
    def _published(self, versions: dict, version: str) -> None:
        if version == "base":
            return
        entry = versions.get(version)
        if entry is None:
            raise RegistryError(f"version {version} does not exist; known: {sorted(versions, key=version_sort_key) or 'none'}")
        if entry["state"] != "published":
            raise RegistryError(f"version {version} is {entry['state']} ({entry.get('reason', '')}); "
                                "only published versions can serve")

    def move(self, event: str, version: str | None, by: str, reason: str) -> dict:
        """promote V: V becomes stable (the old stable is the rollback target).
        rollback [V]: with V, V becomes stable; without, drop the canary if there is one, else
        go back to the rollback target (or base). Returns the notice."""
        with self.r.pipeline() as p:
            while True:
                try:
                    p.watch(self.k.adapters)
                    st = self.state()
                    stable, canary, target = st["stable"], st["canary"], st["rollback_target"]
                    if event == "promote":
                        self._published(st["versions"], version)
                        new = {"stable": version, "canary": "" if canary == version else canary,
                               "rollback_target": stable}
                    elif version is not None:
                        self._published(st["versions"], version)
                        new = {"stable": version, "canary": "", "rollback_target": stable}
                    elif canary:
                        new = {"stable": stable, "canary": "", "rollback_target": target}
                    else:
                        new = {"stable": target or "base", "canary": "", "rollback_target": stable}
                    notice = {"event": event, "version": version or new["stable"], "stable": new["stable"],
                              "canary": new["canary"], "canary_share": st["canary_share"], "by": by,
                              "reason": reason, "at": time.time()}
                    p.multi()
                    p.hset(self.k.adapters, mapping=new)
                    p.xadd(self.k.adapter_history, {k: str(v) for k, v in notice.items()})
                    p.publish(self.k.adapters_changed, json.dumps(notice))
                    p.execute()
                    return notice
                except redis.WatchError:
                    continue  # someone else moved the pointers meanwhile: decide again
