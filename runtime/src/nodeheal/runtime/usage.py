"""`--help` for the service entry points: they take no arguments, only environment variables.

`exit_on_args(argv, prog=..., summary=..., settings=SettingsClass)` prints the usage and the variables
the settings class reads, then exits: 0 for `-h` / `--help`, 2 for anything else. With no arguments it
returns and the service starts. Nothing is connected and no setting is read (a bad environment does
not hide the help).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

from pydantic import BaseModel
from pydantic_settings import BaseSettings

HELP = ("-h", "--help")


def _variables(model: type[BaseModel], prefix: str, delimiter: str) -> Iterator[tuple[str, str]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _variables(annotation, f"{prefix}{name.upper()}{delimiter}", delimiter)
            continue
        yield f"{prefix}{name.upper()}", field.description or ""


def usage(*, prog: str, summary: str, settings: type[BaseSettings]) -> str:
    config = settings.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = str(config.get("env_nested_delimiter") or "__")
    lines = [f"usage: {prog}", "", summary, "", "Configured only by environment variables:"]
    for name, description in _variables(settings, prefix, delimiter):
        lines.append(f"  {name}" + (f"  {description}" if description else ""))
    lines.append("NATS_URL is read when the NATS URL variable is unset.")
    return "\n".join(lines)


def exit_on_args(argv: Sequence[str], *, prog: str, summary: str, settings: type[BaseSettings]) -> None:
    if not argv:
        return
    text = usage(prog=prog, summary=summary, settings=settings)
    if argv[0] in HELP:
        print(text)  # noqa: T201 - the usage text
        raise SystemExit(0)
    print(f"{prog}: takes no arguments (got {' '.join(argv)!r})\n\n{text}", file=sys.stderr)  # noqa: T201
    raise SystemExit(2)
