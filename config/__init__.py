"""Typed node settings: one YAML file, validated at start, with errors that name the key."""

from config.settings import (
    CompletionPolicy,
    ConfigError,
    Destination,
    NodeSection,
    QueueSection,
    Route,
    Settings,
    Source,
    load_settings,
)

__all__ = [
    "CompletionPolicy",
    "ConfigError",
    "Destination",
    "NodeSection",
    "QueueSection",
    "Route",
    "Settings",
    "Source",
    "load_settings",
]
