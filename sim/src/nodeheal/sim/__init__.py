"""Simulation support for tests and ``nodeheal demo``: cloud API emulators and the fleet simulator.

The cloud emulators (``ecs_api``, ``azure_imds``, ``aws_imds``, ``gce_metadata``) are local HTTP servers that
speak the providers' real wire formats, so nodeheal's real SDK and HTTP client code runs against them
unchanged. They bind 127.0.0.1 only and must never be pointed at, or mistaken for, a real cloud.
"""
