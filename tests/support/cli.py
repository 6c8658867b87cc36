"""Command lines of the `nodeheal` CLI in tests."""

from __future__ import annotations

from nodeheal.runtime.settings import NatsSettings


def nats_args(settings: NatsSettings) -> list[str]:
    """A command's connection options for `settings`: the URL, the subject / stream / bucket prefixes and, when
    the settings carry one, the credential (`--creds`, as an operator passes `reader.creds`)."""
    return [
        *("--nats-url", settings.url, "--prefix", settings.prefix, "--stream-prefix", settings.stream_prefix),
        *("--bucket-prefix", settings.bucket_prefix),
        *(("--creds", settings.creds_file) if settings.creds_file else ()),
    ]
