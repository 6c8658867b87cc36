"""Loading and validating the knowledge-base rules file (`rules.yaml`, shipped as package data).

A bad file must stop the diagnoser at start-up with an error that names the rule and says what to fix:
an unknown class, a regex that does not compile, a class without a category, a pre-filter that hides
the rule's own examples. This module only reads data; it never touches the transport.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast, get_args

import yaml

from nodeheal.schemas.kernel import KERNEL_LOG_CLASSES, Category
from nodeheal.schemas.shutdown import DATA_FILE, StopRun, shutdown_stop_run, unit_patterns

CATEGORIES: frozenset[str] = frozenset(get_args(Category))
_RULE_KEYS = frozenset(
    {
        "id",
        "class",
        "contains",
        "regex",
        "examples",
        "fallback",
        "ignore_case",
        "category",
        "note",
        "veto",
        "veto_after",
    }
)
_RUN_KEYS = frozenset(
    {
        "id",
        "class",
        "contains",
        "min_items",
        "window_s",
        "items",
        "skip",
        "veto",
        "examples",
        "counter_examples",
        "category",
        "note",
        "shared",
    }
)
_BLOCK_KEYS = frozenset(
    {
        "id",
        "class",
        "contains",
        "regex",
        "header",
        "within",
        "between",
        "examples",
        "counter_examples",
        "category",
        "note",
    }
)
# runs whose data lives in nodeheal.schemas, read by the detector too (`shared: <name>`)
SHARED_RUNS: dict[str, tuple[str, Callable[[], StopRun]]] = {"shutdown_stop_run": (DATA_FILE, shutdown_stop_run)}
_SHARED_KEYS = frozenset({"contains", "min_items", "window_s", "items", "skip", "veto"})
_ITEM_KEYS = frozenset({"key", "units", "descriptions", "stop", "start"})


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
    veto: re.Pattern[str] | None = None  # Matcher.scan drops the rule's findings in an excerpt holding such a line
    # True: only a veto line after the finding's line drops it (the emitter logs a failure after what it fails)
    veto_after: bool = False

    def prefilter_hit(self, line: str, lowered: str) -> bool:
        haystack = lowered if self.ignore_case else line
        return any(needle in haystack for needle in self.contains)


@dataclass(frozen=True, slots=True)
class RunItem:
    """One thing a run counts: a unit (its names and descriptions) or a kind of line with its own regexes."""

    key: str
    stop: re.Pattern[str]  # the item being stopped
    start: re.Pattern[str]  # the item being started again (a restart, not a shutdown)


@dataclass(frozen=True, slots=True)
class Run:
    """Evidence across lines: `min_items` distinct items stopped within `window_s` seconds (where the lines
    carry time stamps), none started again later in the excerpt, no `veto` line in it (`Matcher.runs`)."""

    id: str
    cls: str
    category: Category
    contains: tuple[str, ...]  # a line is looked at only if it holds one of these (case-sensitive)
    min_items: int
    window_s: float
    items: tuple[RunItem, ...]
    skip: re.Pattern[str] | None
    veto: re.Pattern[str] | None
    examples: tuple[tuple[str, ...], ...]
    counter_examples: tuple[tuple[str, ...], ...]
    note: str = ""

    @property
    def screen(self) -> re.Pattern[str]:
        """One regex of the `contains` literals: a line that holds none of them is not looked at."""
        return _literal_screen(self.contains)


@dataclass(frozen=True, slots=True)
class Block:
    """Evidence inside one block of a program's output (branch kb13): a line matching `regex` (holding one of
    `contains`) that stands under a `header` line at most `within` lines above it, every line between them matching
    `between` — `systemctl status`'s `Active: failed …` under the `● <unit> - <description>` line it belongs to
    (`Matcher.block_finding`). Never applied by `match_line`: the property line alone does not name its unit."""

    id: str
    cls: str
    category: Category
    contains: tuple[str, ...]  # a line is looked at only if it holds one of these (case-sensitive)
    regex: re.Pattern[str]
    header: re.Pattern[str]
    within: int
    between: re.Pattern[str]
    examples: tuple[tuple[str, ...], ...]
    counter_examples: tuple[tuple[str, ...], ...]
    note: str = ""


_SCREENS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _literal_screen(literals: tuple[str, ...]) -> re.Pattern[str]:
    screen = _SCREENS.get(literals)
    if screen is None:
        screen = _SCREENS[literals] = re.compile("|".join(re.escape(c) for c in literals))
    return screen


@dataclass(frozen=True, slots=True)
class KnowledgeBase:
    version: int
    classes: dict[str, ClassInfo]
    rules: tuple[Rule, ...]
    source: str = field(default="")
    runs: tuple[Run, ...] = ()
    blocks: tuple[Block, ...] = ()

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


def _class_of(
    raw: dict[str, Any], classes: dict[str, ClassInfo], *, where: str, allowed: frozenset[str]
) -> tuple[str, Category]:
    """A rule's or run's keys checked, and its class and category (the class's unless it says another)."""
    unknown_keys = set(raw) - allowed
    if unknown_keys:
        raise _fail(where, f"unknown keys {sorted(unknown_keys)}; allowed: {sorted(allowed)}")
    cls = raw.get("class")
    if cls not in classes:
        raise _fail(where, f"unknown class {cls!r}; it must be one of the classes listed under 'classes:'")
    category = raw.get("category", classes[cls].category)
    if category not in CATEGORIES:
        raise _fail(where, f"category {category!r} is not one of {sorted(CATEGORIES)}")
    return str(cls), cast(Category, category)


def _parse_rule(raw: object, index: int, classes: dict[str, ClassInfo], *, source: str) -> Rule:
    if not isinstance(raw, dict):
        raise _fail(f"{source} rule #{index + 1}", "must be a mapping")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise _fail(f"{source} rule #{index + 1}", "missing id")
    where = f"{source} rule {rule_id!r}"
    cls_name, category = _class_of(raw, classes, where=where, allowed=_RULE_KEYS)
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
        category=category,
        contains=contains,
        regex=regex,
        examples=examples,
        fallback=bool(raw.get("fallback", False)),
        ignore_case=ignore_case,
        note=str(raw.get("note", "")),
        veto=_compile(raw["veto"], where=where, key="veto") if "veto" in raw else None,
        veto_after=_veto_after(raw, where=where),
    )
    for example in examples:
        if not rule.prefilter_hit(example, example.lower()):
            raise _fail(where, f"example {example!r} holds none of the 'contains' literals {list(contains)}")
        if not regex.search(example):
            raise _fail(where, f"regex does not match its own example {example!r}")
        if rule.veto is not None and rule.veto.search(example):
            raise _fail(where, f"veto matches the rule's own example {example!r}")
    return rule


def _veto_after(raw: dict[str, Any], *, where: str) -> bool:
    value = raw.get("veto_after", False)
    if not isinstance(value, bool):
        raise _fail(where, f"veto_after must be true or false, got {value!r}")
    if value and "veto" not in raw:
        raise _fail(where, "veto_after without a veto")
    return value


def _compile(pattern: object, *, where: str, key: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise _fail(where, f"{key} must be a non-empty regex string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise _fail(where, f"{key} {pattern!r} does not compile: {exc}") from exc


def _unit_item(raw: dict[str, object], *, where: str) -> RunItem:
    """`Stopping|Stopped [target] <name or description>[...|.]` and its restart, for a unit's names and
    descriptions (also systemd 253+'s `<name> - <description>`)."""
    units = _str_list(raw.get("units"), where=where, key="units")
    descriptions = _str_list(raw.get("descriptions"), where=where, key="descriptions")
    stop, start = unit_patterns(units, descriptions)
    return RunItem(key=str(raw.get("key") or units[0]), stop=re.compile(stop), start=re.compile(start))


def _shared_run(raw: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A run's items, threshold, window, literals, skip and veto from its shared data file (`shared: <name>`),
    in the shape an inline run gives them; a run may not also give them itself (one place)."""
    name = raw["shared"]
    if name not in SHARED_RUNS:
        raise _fail(where, f"shared {name!r} is not one of {sorted(SHARED_RUNS)}")
    file, load = SHARED_RUNS[name]
    twice = sorted(_SHARED_KEYS & set(raw))
    if twice:
        raise _fail(where, f"{twice} come from nodeheal.schemas/{file} (shared: {name}); remove them here")
    spec = load()
    items = [{"key": i.key, "stop": i.stop, "start": i.start} for i in spec.items]
    return {
        **raw,
        "contains": list(spec.contains),
        "min_items": spec.min_items,
        "window_s": spec.window_s,
        "items": items,
        "skip": spec.skip,
        "veto": spec.veto,
    }


def _parse_run(raw: object, index: int, classes: dict[str, ClassInfo], *, source: str) -> Run:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw.get("id"):
        raise _fail(f"{source} run #{index + 1}", "must be a mapping with an id")
    run_id = str(raw["id"])
    where = f"{source} run {run_id!r}"
    cls_name, category = _class_of(raw, classes, where=where, allowed=_RUN_KEYS)
    if "shared" in raw:
        raw = _shared_run(raw, where=where)
    min_items = raw.get("min_items")
    if not isinstance(min_items, int) or isinstance(min_items, bool) or min_items < 2:
        raise _fail(where, f"min_items must be an integer >= 2 (one line is a rule's job), got {min_items!r}")
    window = raw.get("window_s")
    if not isinstance(window, int | float) or isinstance(window, bool) or window <= 0:
        raise _fail(where, f"window_s must be a positive number of seconds, got {window!r}")
    raw_items = raw.get("items")
    if not isinstance(raw_items, list) or len(raw_items) < min_items:
        raise _fail(where, f"items must be a list of at least min_items ({min_items}) items")
    items: list[RunItem] = []
    for n, item in enumerate(raw_items):
        item_where = f"{where} item #{n + 1}"
        if not isinstance(item, dict) or set(item) - _ITEM_KEYS:
            raise _fail(item_where, f"must be a mapping of {sorted(_ITEM_KEYS)}")
        if "stop" in item:
            if not isinstance(item.get("key"), str) or not item["key"]:
                raise _fail(item_where, "an item with its own stop/start regexes needs a key")
            stop = _compile(item.get("stop"), where=item_where, key="stop")
            start = _compile(item.get("start"), where=item_where, key="start")
            items.append(RunItem(key=str(item["key"]), stop=stop, start=start))
        else:
            items.append(_unit_item(item, where=item_where))
    if len({i.key for i in items}) != len(items):
        raise _fail(where, "two items have the same key")
    skip = _compile(raw["skip"], where=where, key="skip") if "skip" in raw else None
    veto = _compile(raw["veto"], where=where, key="veto") if "veto" in raw else None

    def excerpts(key: str) -> tuple[tuple[str, ...], ...]:
        return _excerpts(raw, key, where=where)

    return Run(
        id=run_id,
        cls=cls_name,
        category=category,
        contains=_str_list(raw.get("contains"), where=where, key="contains"),
        min_items=min_items,
        window_s=float(window),
        items=tuple(items),
        skip=skip,
        veto=veto,
        examples=excerpts("examples"),
        counter_examples=excerpts("counter_examples"),
        note=str(raw.get("note", "")),
    )


def _excerpts(raw: dict[str, Any], key: str, *, where: str) -> tuple[tuple[str, ...], ...]:
    """A rule's example excerpts: lists of lines, an empty line among them as real output has (a Go trace's blank
    line after its signal line), but not an excerpt of empty lines only."""
    value = raw.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, list) and v for v in value):
        raise _fail(where, f"{key} must be a non-empty list of excerpts (lists of lines)")
    for v in value:
        if not all(isinstance(line, str) for line in v) or not any(v):
            raise _fail(where, f"{key}: an excerpt must be a list of lines (strings), not all empty, got {v!r}")
    return tuple(tuple(v) for v in value)


def _parse_block(raw: object, index: int, classes: dict[str, ClassInfo], *, source: str) -> Block:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw.get("id"):
        raise _fail(f"{source} block #{index + 1}", "must be a mapping with an id")
    block_id = str(raw["id"])
    where = f"{source} block {block_id!r}"
    cls_name, category = _class_of(raw, classes, where=where, allowed=_BLOCK_KEYS)
    within = raw.get("within")
    if not isinstance(within, int) or isinstance(within, bool) or not 1 <= within <= 20:
        raise _fail(where, f"within must be an integer from 1 to 20 (lines above the matched one), got {within!r}")
    return Block(
        id=block_id,
        cls=cls_name,
        category=category,
        contains=_str_list(raw.get("contains"), where=where, key="contains"),
        regex=_compile(raw.get("regex"), where=where, key="regex"),
        header=_compile(raw.get("header"), where=where, key="header"),
        within=within,
        between=_compile(raw.get("between"), where=where, key="between"),
        examples=_excerpts(raw, "examples", where=where),
        counter_examples=_excerpts(raw, "counter_examples", where=where),
        note=str(raw.get("note", "")),
    )


def _unique(
    kind: str, entries: tuple[Rule, ...] | tuple[Run, ...] | tuple[Block, ...], seen: set[str], *, source: str
) -> None:
    """Rules, runs and blocks share one id space: the first id seen twice is refused."""
    for entry in entries:
        if entry.id in seen:
            raise _fail(f"{source} {kind} {entry.id!r}", "duplicate id")
        seen.add(entry.id)


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
    _unique("rule", rules, seen, source=source)
    uncovered = [c for c in KERNEL_LOG_CLASSES if not any(r.cls == c for r in rules)]
    if uncovered:
        raise _fail(source, f"classes {uncovered} have no rule")
    raw_runs = doc.get("runs", [])
    if not isinstance(raw_runs, list):
        raise _fail(source, "'runs' must be a list")
    runs = tuple(_parse_run(raw, i, classes, source=source) for i, raw in enumerate(raw_runs))
    _unique("run", runs, seen, source=source)
    raw_blocks = doc.get("blocks", [])
    if not isinstance(raw_blocks, list):
        raise _fail(source, "'blocks' must be a list")
    blocks = tuple(_parse_block(raw, i, classes, source=source) for i, raw in enumerate(raw_blocks))
    _unique("block", blocks, seen, source=source)
    return KnowledgeBase(version=1, classes=classes, rules=rules, source=source, runs=runs, blocks=blocks)


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
