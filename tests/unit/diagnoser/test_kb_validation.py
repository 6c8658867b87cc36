"""The loader rejects a bad rules file with an error that names the rule and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nodeheal.diagnoser.kb import KnowledgeBaseError, load_knowledge_base, parse_knowledge_base
from nodeheal.diagnoser.kb.loader import CATEGORIES
from nodeheal.schemas.kernel import KERNEL_LOG_CLASSES


def shipped() -> dict:  # type: ignore[type-arg]
    import importlib.resources

    text = importlib.resources.files("nodeheal.diagnoser.kb").joinpath("rules.yaml").read_text()
    return yaml.safe_load(text)


def parse(doc: dict) -> None:  # type: ignore[type-arg]
    parse_knowledge_base(yaml.safe_dump(doc), source="test.yaml")


def test_the_shipped_file_loads_and_covers_every_class() -> None:
    kb = load_knowledge_base()
    assert set(kb.classes) == set(KERNEL_LOG_CLASSES)
    assert {r.cls for r in kb.rules} == set(KERNEL_LOG_CLASSES)
    assert all(info.category in CATEGORIES for info in kb.classes.values())


def test_unknown_class_names_the_rule() -> None:
    doc = shipped()
    doc["rules"][0]["class"] = "kernel_gremlins"
    with pytest.raises(KnowledgeBaseError, match=r"rule 'vmcore.sys_panic'.*unknown class 'kernel_gremlins'"):
        parse(doc)


def test_bad_regex_names_the_rule_and_the_pattern() -> None:
    doc = shipped()
    rule = next(r for r in doc["rules"] if r["id"] == "net.conntrack_full")
    rule["regex"] = "table full (dropping"
    with pytest.raises(KnowledgeBaseError, match=r"rule 'net.conntrack_full': regex .* does not compile"):
        parse(doc)


def test_class_without_category_is_rejected() -> None:
    doc = shipped()
    del doc["classes"]["oom_killer"]["category"]
    with pytest.raises(KnowledgeBaseError, match=r"class 'oom_killer': missing category"):
        parse(doc)


def test_missing_class_entry_is_rejected() -> None:
    doc = shipped()
    del doc["classes"]["hung_task"]
    with pytest.raises(KnowledgeBaseError, match=r"\['hung_task'\] have no entry"):
        parse(doc)


def test_rule_that_no_longer_matches_its_example_is_rejected() -> None:
    doc = shipped()
    rule = next(r for r in doc["rules"] if r["id"] == "lockup.soft")
    rule["regex"] = r"^watchdog: BUG: soft lockup"  # would miss the 3.10 'NMI watchdog:' wording
    with pytest.raises(KnowledgeBaseError, match=r"rule 'lockup.soft': regex does not match its own example"):
        parse(doc)


def test_prefilter_that_hides_an_example_is_rejected() -> None:
    doc = shipped()
    rule = next(r for r in doc["rules"] if r["id"] == "net.conntrack_full")
    rule["contains"] = ["nf_conntrack: nf_conntrack:"]
    with pytest.raises(KnowledgeBaseError, match=r"rule 'net.conntrack_full': example .* holds none of the 'contains'"):
        parse(doc)


def test_bad_category_and_duplicate_id_and_unknown_key() -> None:
    doc = shipped()
    doc["rules"][1]["category"] = "cosmic_rays"
    with pytest.raises(KnowledgeBaseError, match="cosmic_rays"):
        parse(doc)
    doc = shipped()
    doc["rules"][1]["id"] = doc["rules"][0]["id"]
    with pytest.raises(KnowledgeBaseError, match="duplicate id"):
        parse(doc)
    doc = shipped()
    doc["rules"][0]["regexp"] = "x"
    with pytest.raises(KnowledgeBaseError, match="unknown keys"):
        parse(doc)


def test_unreadable_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeBaseError, match="cannot be read"):
        load_knowledge_base(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(KnowledgeBaseError, match="not valid YAML"):
        load_knowledge_base(bad)


def test_the_prefix_tree_prefilter_finds_exactly_the_lines_holding_a_literal() -> None:
    import re

    from nodeheal.diagnoser.kb.matcher import literal_trie_pattern

    literals = ["kernel: /", "kernel bug at", "kubelet.service", "kube", "oops: ", "oom"]
    trie = re.compile(literal_trie_pattern(literals))
    lines = ["kernel: [1.0] oops: 0000", "Kernel: x", "the kube way", "kubelet.service: main", "zoom", "nothing"]
    for line in lines:
        assert bool(trie.search(line.lower())) == any(lit in line.lower() for lit in literals), line
