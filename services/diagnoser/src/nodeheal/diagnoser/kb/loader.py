"""Loading and validating the knowledge-base rules file (`rules.yaml`, shipped as package data).

A bad file must stop the diagnoser at start-up with an error that names the rule and says what to fix:
an unknown class, a regex that does not compile, a class without a category, a pre-filter that hides
the rule's own examples. This module only reads data; it never touches the transport.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import cast, get_args

import yaml

from nodeheal.schemas.kernel import KERNEL_LOG_CLASSES, Category

CATEGORIES: frozenset[str] = frozenset(get_args(Category))
_RULE_KEYS = frozenset({"id", "class", "contains", "regex", "examples", "fallback", "ignore_case", "category", "note"})


class KnowledgeBaseError(ValueError):
    """The rules file is invalid; the message names the rule and the problem."""


@dataclass(frozen=True, slots=True)
class ClassInfo:
    name: str
    category: Category
    rank: int
    summary: str


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    cls: str
    category: Category
    contains: tuple[str, ...]
    regex: re.Pattern[str]
    examples: tuple[str, ...]
    fallback: bool = False
    ignore_case: bool = False
    note: str = ""

    def prefilter_hit(self, line: str, lowered: str) -> bool:
        haystack = lowered if self.ignore_case else line
        return any(needle in haystack for needle in self.contains)


@dataclass(frozen=True, slots=True)
class KnowledgeBase:
    version: int
    classes: dict[str, ClassInfo]
    rules: tuple[Rule, ...]
    source: str = field(default="")

    def rank(self, cls: str) -> int:
        return self.classes[cls].rank

    def category(self, cls: str) -> Category:
        return self.classes[cls].category


def _fail(where: str, problem: str) -> KnowledgeBaseError:
    return KnowledgeBaseError(f"knowledge base {where}: {problem}")


def _parse_class(name: object, raw: object, *, source: str) -> ClassInfo:
    where = f"{source} class {name!r}"
    if not isinstance(name, str) or name not in KERNEL_LOG_CLASSES:
        raise _fail(where, f"unknown class; known classes: {', '.join(KERNEL_LOG_CLASSES)}")
    if not isinstance(raw, dict):
        raise _fail(where, "must be a mapping with category, rank and summary")
    category = raw.get("category")
    if category is None:
        raise _fail(where, f"missing category; add one of {sorted(CATEGORIES)}")
    if category not in CATEGORIES:
        raise _fail(where, f"category {category!r} is not one of {sorted(CATEGORIES)}")
    rank = raw.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise _fail(where, f"rank must be an integer (higher = more decisive), got {rank!r}")
    return ClassInfo(name=name, category=cast(Category, category), rank=rank, summary=str(raw.get("summary", "")))


def _str_list(value: object, *, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, f"{key} must be a non-empty list of non-empty strings, got {value!r}")
    return tuple(value)


def _parse_rule(raw: object, index: int, classes: dict[str, ClassInfo], *, source: str) -> Rule:
    if not isinstance(raw, dict):
        raise _fail(f"{source} rule #{index + 1}", "must be a mapping")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise _fail(f"{source} rule #{index + 1}", "missing id")
    where = f"{source} rule {rule_id!r}"
    unknown_keys = set(raw) - _RULE_KEYS
    if unknown_keys:
        raise _fail(where, f"unknown keys {sorted(unknown_keys)}; allowed: {sorted(_RULE_KEYS)}")
    cls = raw.get("class")
    if cls not in classes:
        raise _fail(where, f"unknown class {cls!r}; it must be one of the classes listed under 'classes:'")
    cls_name = cast(str, cls)
    category = raw.get("category", classes[cls_name].category)
    if category not in CATEGORIES:
        raise _fail(where, f"category {category!r} is not one of {sorted(CATEGORIES)}")
    pattern = raw.get("regex")
    if not isinstance(pattern, str) or not pattern:
        raise _fail(where, "missing regex")
    ignore_case = bool(raw.get("ignore_case", False))
    try:
        regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise _fail(where, f"regex {pattern!r} does not compile: {exc}") from exc
    contains = _str_list(raw.get("contains"), where=where, key="contains")
    if ignore_case and any(c != c.lower() for c in contains):
        raise _fail(where, "with ignore_case: true every 'contains' literal must be lower case")
    examples = _str_list(raw.get("examples"), where=where, key="examples")
    rule = Rule(
        id=rule_id,
        cls=cls_name,
        category=cast(Category, category),
        contains=contains,
        regex=regex,
        examples=examples,
        fallback=bool(raw.get("fallback", False)),
        ignore_case=ignore_case,
        note=str(raw.get("note", "")),
    )
    for example in examples:
        if not rule.prefilter_hit(example, example.lower()):
            raise _fail(where, f"example {example!r} holds none of the 'contains' literals {list(contains)}")
        if not regex.search(example):
            raise _fail(where, f"regex does not match its own example {example!r}")
    return rule


def parse_knowledge_base(text: str, *, source: str = "<rules>") -> KnowledgeBase:
    """Parse and validate rules YAML text; raise `KnowledgeBaseError` naming the first problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(source, f"is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise _fail(source, "must be a mapping with 'version', 'classes' and 'rules'")
    version = doc.get("version")
    if version != 1:
        raise _fail(source, f"version {version!r} is not supported; this diagnoser reads version 1")
    raw_classes = doc.get("classes")
    if not isinstance(raw_classes, dict):
        raise _fail(source, "'classes' must be a mapping of class name → {category, rank, summary}")
    classes = {str(name): _parse_class(name, raw, source=source) for name, raw in raw_classes.items()}
    missing = [c for c in KERNEL_LOG_CLASSES if c not in classes]
    if missing:
        raise _fail(source, f"classes {missing} have no entry under 'classes:' (each needs a category)")
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise _fail(source, "'rules' must be a non-empty list")
    rules = tuple(_parse_rule(raw, i, classes, source=source) for i, raw in enumerate(raw_rules))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise _fail(f"{source} rule {rule.id!r}", "duplicate id")
        seen.add(rule.id)
    uncovered = [c for c in KERNEL_LOG_CLASSES if not any(r.cls == c for r in rules)]
    if uncovered:
        raise _fail(source, f"classes {uncovered} have no rule")
    return KnowledgeBase(version=1, classes=classes, rules=rules, source=source)


def load_knowledge_base(path: str | Path | None = None) -> KnowledgeBase:
    """The rules file at `path`, or the one shipped with the package."""
    if path is None:
        text = resources.files("nodeheal.diagnoser.kb").joinpath("rules.yaml").read_text(encoding="utf-8")
        return parse_knowledge_base(text, source="nodeheal.diagnoser.kb/rules.yaml")
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(str(file), f"cannot be read ({exc.strerror}); check the path") from exc
    return parse_knowledge_base(text, source=str(file))
