"""`nodeheal replay --what-if RULES.yaml`: a misspelt key in any section is an error naming it. The detector and
policy models ignore unknown fields, so `policy: {aproval_required: …}` once ran the sandbox on the defaults and
reported no difference."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeheal.cli.whatif import load_rules


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("policy:\n  aproval_required: [reboot]\n", "policy.aproval_required"),
        ("detector:\n  disk_full_pc: 90\n", "detector.disk_full_pc"),
        ("diagnoser:\n  no_such_field: 1\n", "diagnoser.no_such_field"),
        ("detectors:\n  disk_full_pct: 90\n", "detectors"),
        ("policy: [dry_run]\n", "policy must be a mapping"),
    ],
)
def test_a_misspelt_key_is_an_error_naming_it(tmp_path: Path, text: str, named: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_rules(rules)


def test_known_keys_load(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("detector:\n  disk_full_pct: 90\n  disk_clear_pct: 80\npolicy:\n  dry_run: true\n")
    loaded = load_rules(rules)
    assert loaded.detector.disk_full_pct == 90
    assert loaded.policy.dry_run is True
