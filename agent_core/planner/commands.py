"""``medagent plan`` and the place where ``medagent planner train|eval|add-tool`` attach.

``medagent plan --instruction TEXT [--modality M] [--body-part B] [--planner rules|llm] [--config PATH]
[--json]`` prints the plan a planner makes for an instruction on a study with that metadata: as JSON with
``--json``, else in MMedAgent's text format. Nothing runs and no study is needed.

The training commands live in ``agent_core.planner.training_commands`` (its
``register_training_commands(commands, default_config)``); when that module is absent the CLI has none.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

TRAINING_COMMANDS_MODULE = "agent_core.planner.training_commands"
LLM_PLANNER_MODULE = "agent_core.planner.llm"


def add_planner_commands(commands: Any, default_config: Path) -> None:
    """Add ``plan`` and, when installed, the training subcommands to the ``medagent`` parser's ``commands``."""
    plan = commands.add_parser(
        "plan", help="print the plan a planner makes for an instruction (nothing runs)", description=__doc__
    )
    plan.add_argument("--instruction", required=True, help="what to do, as a user or a route would say it")
    plan.add_argument("--modality", default="", help="the study's Modality (CT, MR, CR, ...)")
    plan.add_argument("--body-part", default="", help="the study's BodyPartExamined (CHEST, HEAD, ...)")
    plan.add_argument(
        "--planner", choices=("rules", "llm"), default=None, help="default: planner.kind of the configuration"
    )
    plan.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"node configuration (default: {default_config} if it exists)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=_plan, default_config=default_config)
    _register_training_commands(commands, default_config)


def _register_training_commands(commands: Any, default_config: Path) -> None:
    """Attach ``planner train|eval|add-tool`` from ``training_commands`` when that module exists.

    Only the module's own absence is tolerated; an error inside it is a bug and is raised.
    """
    try:
        module = importlib.import_module(TRAINING_COMMANDS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != TRAINING_COMMANDS_MODULE:
            raise
        return
    module.register_training_commands(commands, default_config)


def _settings(arguments: argparse.Namespace) -> Any:
    """The configuration named by ``--config``, else the default file when present, else the defaults."""
    from config import Settings, load_settings

    path = arguments.config
    if path is None:
        path = arguments.default_config if Path(arguments.default_config).is_file() else None
    return Settings() if path is None else load_settings(path)


def _planner(kind: str, registry: Any, settings: Any) -> Any:
    """The planner of ``kind``; ``None`` when the LLM planner is not installed here."""
    from agent_core.planner.rules import RulesPlanner

    if kind == "rules":
        return RulesPlanner(registry, rules=settings.planner.rules)
    try:
        module = importlib.import_module(LLM_PLANNER_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != LLM_PLANNER_MODULE:
            raise
        return None
    return module.LLMPlanner(registry, settings)


def _plan(arguments: argparse.Namespace) -> int:
    from agent_core.planner.rules import StudyContext
    from agent_core.registry import ToolRegistry

    settings = _settings(arguments)
    kind = arguments.planner or settings.planner.kind.value
    registry = ToolRegistry.default(settings.models)
    planner = _planner(kind, registry, settings)
    if planner is None:
        print(
            f"medagent: the LLM planner is not installed here ({LLM_PLANNER_MODULE} is missing); "
            "use --planner rules",
            file=sys.stderr,
        )
        return 2
    study = StudyContext(
        modality=arguments.modality.strip().upper(), body_part=arguments.body_part.strip().upper()
    )
    plan = planner.plan(arguments.instruction, study)
    if arguments.json:
        print(json.dumps(plan.to_dict(), indent=1, ensure_ascii=False))
    else:
        print(plan.to_mmedagent_text())
    return 0
