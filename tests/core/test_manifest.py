"""core/manifest.AdapterManifest on plain data: a manifest round-trips through JSON with the keys
it does not name kept, and one that does not describe a version is refused naming the field."""
from __future__ import annotations

import json

import pytest

from core.manifest import AdapterManifest, ManifestInvalid

WRITTEN = {"version": 3, "parent": "2", "parent_choice": "the canary 2", "base_model": "m", "state": "published",
           "reason": "", "created": 1700000000.5, "sha256": "ab" * 32, "train_seconds": 12.5, "samples_used": 40,
           "holdout": 8, "reward_config_hash": "e4e0", "stream_range": ["1-0", "9-3"], "training": {"steps": 4},
           "probe": {"decision": "pass", "unsafe_new": 0.0, "unsafe_parent": 0.03, "n": 36, "by_kind": {}},
           "imported_from": "/somewhere", "schema_version": 1}


def test_a_manifest_round_trips_and_keeps_what_it_does_not_name():
    m = AdapterManifest.from_json(json.dumps(WRITTEN))
    assert (m.version, m.parent, m.training, m.extra) == (3, "2", {"steps": 4}, {"imported_from": "/somewhere"})
    written = json.loads(m.to_json())
    assert {k: written[k] for k in WRITTEN} == WRITTEN      # every key as written (defaults added beside)
    assert AdapterManifest.from_json(m.to_json()) == m
    entry = m.registry_entry("/data/v3")
    assert entry["samples"] == 40 and entry["path"] == "/data/v3" and "by_kind" not in entry["probe"]


def test_an_older_manifest_without_a_schema_version_reads_and_a_numeric_parent_is_a_name():
    old = {k: v for k, v in WRITTEN.items() if k != "schema_version"} | {"parent": 2}
    assert AdapterManifest.from_dict(old).parent == "2"


@pytest.mark.parametrize("change, field", [({"version": 0}, "version"), ({"version": "3"}, "version"),
                                            ({"state": "maybe"}, "state"), ({"base_model": ""}, "base_model"),
                                            ({"created": float("nan")}, "created")])
def test_a_bad_field_is_refused_by_name(change, field):
    with pytest.raises(ManifestInvalid, match=field):
        AdapterManifest.from_dict(WRITTEN | change)


def test_missing_fields_and_non_json_are_refused():
    with pytest.raises(ManifestInvalid, match="lacks base_model"):
        AdapterManifest.from_dict({"version": 1, "state": "published"})
    with pytest.raises(ManifestInvalid, match="not JSON"):
        AdapterManifest.from_json("{")
    with pytest.raises(ManifestInvalid, match="JSON object"):
        AdapterManifest.from_dict([1])
