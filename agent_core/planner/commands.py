"""``medagent plan`` and ``medagent planner train|eval|add-tool``: the planner's command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_planner_commands(commands: Any, default_config: Path) -> None:
    """Add the planner's subcommands to the ``medagent`` parser's ``commands``."""
    _ = (commands, default_config, argparse)
