"""``medagent planner train | eval | add-tool | generate-data``: training and evaluating the LLM planner.

    medagent planner generate-data --out DIR [--train 4800 --val 100 --test 400 --seed 0]
    medagent planner train --out DIR [--rank 128 --alpha 256 --lr 2e-4 --steps N | --epochs 1 ...]
                           [--init-adapter DIR] [--frame-dropout P] [--extra-frames]
    medagent planner eval FILE.jsonl [--planner llm|rules] [--adapter DIR] [--tool SPEC.json] [--json]
    medagent planner add-tool --tool SPEC.json --adapter DIR --out DIR [--steps 80 --lr 5e-5] [--evaluate OLD.jsonl]
                              [--calibrate 400]
    medagent planner calibrate --adapter DIR --tool SPEC.json [--requests 400]

``train`` generates its data (``agent_core.planner.data``, seeded by ``--seed``) unless ``--data`` names a
JSONL of conversations, trains a LoRA adapter into ``--out`` (resuming a checkpoint there) and writes the
held-out requests beside it (``val_eval.jsonl``, ``test_eval.jsonl``) for ``eval``. The backbone is
``models.llm`` of ``--config`` when set, else the packaged SmolLM2-135M-Instruct.

``add-tool`` teaches an adapter one more tool, MMedAgent's "pseudo tool" experiment: ``SPEC.json`` is the
tool's card (``name``, ``description``, ``modalities``, ``parameters``) plus ``examples``, requests that
need it (``{"instruction", "params"?, "language"?}``, at least 5; a fifth is held out). It trains on the
new tool's examples mixed with replayed examples of the old tools (offered beside the new one), starting
from ``--adapter``, and with ``--evaluate OLD.jsonl`` prints accuracy before and after on the old requests
and on the new tool's held-out ones. The new adapter extends ``--adapter`` (``extension.json``, see
``agent_core.planner.llm``): configured as ``planner.adapter`` it plans a request with the new tool when it
calls that tool and leaves every other request to ``--adapter``, which must stay where it is. The replayed
requests are drawn on studies where the new tool runs, the only ones the new adapter is asked. Before it
evaluates, ``add-tool`` calibrates the new adapter (``calibrate``, also a command of its own for an adapter
trained before): it plans ``--calibrate`` old-tool requests of the val sentence families on studies where
the new tool runs, and sets ``min_first_probability`` in ``extension.json`` just above the highest
first-word probability among the plans that call the new tool by mistake (at least 0.5), so that at run
time a new-tool plan less sure than those is left to ``--adapter``. At run time
the tool must be registered (an installed ``medagent.tools`` entry point); ``eval --tool SPEC.json``
registers it by its card for evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_EXAMPLES = 4800
DEFAULT_VAL_EXAMPLES = 100
DEFAULT_TEST_EXAMPLES = 400
#: old-tool val requests on which ``calibrate`` counts an extension's false calls of the tools it added
CALIBRATION_REQUESTS = 400


def register_training_commands(commands: Any, default_config: Path) -> None:
    """Add ``planner`` and its subcommands to the ``medagent`` parser's ``commands``."""
    planner = commands.add_parser(
        "planner",
        help="train and evaluate the LLM planner",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = planner.add_subparsers(dest="planner_command", required=True)

    def config_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"node configuration (default: {default_config} if it exists)",
        )
        parser.set_defaults(default_config=default_config)

    generate = subcommands.add_parser("generate-data", help="write training conversations and eval requests")
    generate.add_argument("--out", type=Path, required=True, help="folder for train/val/test JSONL files")
    _data_arguments(generate)
    config_argument(generate)
    generate.set_defaults(handler=_generate_data)

    train = subcommands.add_parser("train", help="LoRA fine-tuning of the planner's backbone")
    train.add_argument("--out", type=Path, required=True, help="adapter folder (resumes a checkpoint there)")
    train.add_argument("--data", type=Path, default=None, help="conversations JSONL (default: generated)")
    train.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        help="continue training this adapter, in its own LoRA shape, instead of a new one",
    )
    _data_arguments(train)
    _training_arguments(train, steps_default=None)
    config_argument(train)
    train.set_defaults(handler=_train)

    evaluate = subcommands.add_parser(
        "eval", help="tool accuracy, prompt recall and JSON validity on requests"
    )
    evaluate.add_argument(
        "file", type=Path, metavar="FILE.jsonl", help='one request a line: {"id", "instruction", ...}'
    )
    evaluate.add_argument("--planner", choices=("llm", "rules"), default="llm")
    evaluate.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="LoRA adapter (default: planner.adapter or the committed one)",
    )
    evaluate.add_argument(
        "--tool", type=Path, action="append", default=[], help="register a tool by its SPEC.json card"
    )
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N requests")
    evaluate.add_argument("--device", default=None, help="torch device (default: models.device)")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    config_argument(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    add_tool = subcommands.add_parser("add-tool", help="teach an adapter one more tool and keep the old ones")
    add_tool.add_argument(
        "--tool", type=Path, required=True, help="SPEC.json: the tool's card and example requests"
    )
    add_tool.add_argument(
        "--adapter", type=Path, default=None, help="adapter to start from (default: the committed one)"
    )
    add_tool.add_argument("--out", type=Path, required=True, help="folder for the new adapter")
    add_tool.add_argument("--new-examples", type=int, default=400, help="training requests for the new tool")
    add_tool.add_argument(
        "--replay", type=int, default=1600, help="replayed old-tool requests on studies where the tool runs"
    )
    add_tool.add_argument(
        "--evaluate", type=Path, default=None, metavar="OLD.jsonl", help="old requests to score before/after"
    )
    add_tool.add_argument("--eval-limit", type=int, default=None, help="only the first N old requests")
    add_tool.add_argument(
        "--calibrate",
        type=_count,
        default=CALIBRATION_REQUESTS,
        metavar="N",
        help="old-tool val requests that set the new adapter's min_first_probability (0: keep 0.5)",
    )
    add_tool.add_argument("--seed", type=int, default=0)
    # 80 steps at 5e-5 with 1,600 replayed requests kept run 5's old-tool selection, not run 8's (MODEL_CARD.md)
    _training_arguments(add_tool, steps_default=80, with_rank=False, lr_default=5e-5)
    config_argument(add_tool)
    add_tool.set_defaults(handler=_add_tool)

    calibrate = subcommands.add_parser(
        "calibrate", help="set the first-word probability an adapter add-tool wrote needs to call its tool"
    )
    calibrate.add_argument("--adapter", type=Path, required=True, help="an adapter add-tool wrote")
    calibrate.add_argument(
        "--tool", type=Path, action="append", required=True, help="SPEC.json of a tool it added"
    )
    calibrate.add_argument("--requests", type=_count, default=CALIBRATION_REQUESTS, metavar="N")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--device", default=None, help="torch device (default: models.device)")
    config_argument(calibrate)
    calibrate.set_defaults(handler=_calibrate)


def _count(text: str) -> int:
    """A whole number of requests, 0 or more (argparse reports the error with the option's name)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"Invalid value {text!r} - must be 0 or more")
    return value


def _share(text: str) -> float:
    """An argument between 0 and 1 (argparse reports the error with the option's name)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"Invalid value {text!r} - must be between 0 and 1")
    return value


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-examples", type=int, default=DEFAULT_TRAIN_EXAMPLES)
    parser.add_argument(
        "--frame-dropout",
        type=_share,
        default=0.0,
        help="share of training requests whose sentence frame loses a word or two (keywords stay)",
    )
    parser.add_argument(
        "--extra-frames",
        action="store_true",
        help="draw training requests from the training-only sentence frames too (TRAINING_PHRASINGS)",
    )
    parser.add_argument("--val-examples", type=int, default=DEFAULT_VAL_EXAMPLES)
    parser.add_argument("--test-examples", type=int, default=DEFAULT_TEST_EXAMPLES)
    if not any(action.dest == "seed" for action in parser._actions):
        parser.add_argument("--seed", type=int, default=0, help="data order, LoRA initialisation and data")


def _training_arguments(
    parser: argparse.ArgumentParser,
    steps_default: int | None,
    with_rank: bool = True,
    lr_default: float = 2e-4,
) -> None:
    if with_rank:
        parser.add_argument("--rank", type=int, default=128, help="LoRA rank (MMedAgent: 128)")
        parser.add_argument("--alpha", type=int, default=256, help="LoRA alpha (MMedAgent: 256)")
        parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (0 is faster on CPU)")
        parser.add_argument("--target-modules", default="all-linear", help="peft target_modules")
    parser.add_argument(
        "--lr", type=float, default=lr_default, help="peak learning rate (cosine; MMedAgent trains at 2e-4)"
    )
    parser.add_argument("--warmup-ratio", type=float, default=0.03)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument(
        "--steps", type=int, default=steps_default, help="optimizer steps (wins over --epochs)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=384, help="longest conversation in tokens")
    parser.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--device", default=None, help="torch device (default: models.device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after N steps of this run (a checkpoint; resume later)",
    )


def _settings(arguments: argparse.Namespace) -> Any:
    from config import Settings, load_settings

    path = arguments.config
    if path is None and Path(arguments.default_config).is_file():
        path = arguments.default_config
    return Settings() if path is None else load_settings(path)


def _cards(settings: Any) -> list[Any]:
    from agent_core.planner.data import default_cards

    return default_cards(settings.models)


def read_tool_spec(path: Path) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """A new tool's SPEC.json: its card, its example requests and the spec; ``SystemExit`` says what is wrong."""
    from agent_core.planner.data import card_from_dict, new_tool_examples

    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"medagent: cannot read the tool spec {path}: {exc}") from None
    try:
        return card_from_dict(spec), new_tool_examples(spec), spec
    except ValueError as exc:
        raise SystemExit(f"medagent: {path}: {exc}") from None


# ----------------------------------------------------------------------------------------------- handlers


def _dataset(arguments: argparse.Namespace, cards: list[Any]) -> Any:
    """The train, val and test requests the data arguments (``_data_arguments``) ask for."""
    from agent_core.planner.data import build_dataset

    return build_dataset(
        cards,
        arguments.train_examples,
        arguments.val_examples,
        arguments.test_examples,
        arguments.seed,
        arguments.frame_dropout,
        arguments.extra_frames,
    )


def _generate_data(arguments: argparse.Namespace) -> int:
    from agent_core.planner.data import write_dataset

    settings = _settings(arguments)
    cards = _cards(settings)
    dataset = _dataset(arguments, cards)
    counts = write_dataset(arguments.out, dataset, cards)
    for name, count in counts.items():
        print(f"{arguments.out / name}: {count} records")
    return 0


def _continued(adapter: Path) -> dict[str, Any]:
    """The ``TrainConfig`` values that continue ``adapter``: its path and its own LoRA shape."""
    try:
        lora = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"medagent: cannot read the adapter {adapter}: {exc}") from None
    return {
        "init_adapter": str(adapter),
        "rank": lora["r"],
        "alpha": lora["lora_alpha"],
        "dropout": lora.get("lora_dropout", 0.0),
    }


def _train_config(arguments: argparse.Namespace, settings: Any, **overrides: Any) -> Any:
    from agent_core.planner.train import TrainConfig

    values = {
        "out": arguments.out,
        "learning_rate": arguments.lr,
        "epochs": arguments.epochs,
        "steps": arguments.steps,
        "batch_size": arguments.batch_size,
        "max_length": arguments.max_length,
        "seed": arguments.seed,
        "warmup_ratio": arguments.warmup_ratio,
        "save_every": arguments.save_every,
        "precision": arguments.precision,
        "device": arguments.device or settings.models.device,
    }
    if hasattr(arguments, "rank"):
        values.update(
            rank=arguments.rank,
            alpha=arguments.alpha,
            dropout=arguments.dropout,
            target_modules=arguments.target_modules,
        )
    values.update(overrides)
    try:
        return TrainConfig(**values)
    except ValueError as exc:
        raise SystemExit(f"medagent: {exc}") from None


def _train(arguments: argparse.Namespace) -> int:
    from agent_core.planner.data import conversation, eval_item, read_jsonl, write_jsonl
    from agent_core.planner.train import train

    settings = _settings(arguments)
    initial = {} if arguments.init_adapter is None else _continued(arguments.init_adapter)
    config = _train_config(arguments, settings, **initial)
    extra: dict[str, Any] = {}
    if arguments.data is not None:
        records = list(read_jsonl(arguments.data))
        extra["data_source"] = str(arguments.data)
    else:
        cards = _cards(settings)
        dataset = _dataset(arguments, cards)
        records = [conversation(example, cards) for example in dataset.train]
        arguments.out.mkdir(parents=True, exist_ok=True)
        for split in ("val", "test"):
            write_jsonl(
                arguments.out / f"{split}_eval.jsonl", (eval_item(e) for e in getattr(dataset, split))
            )
        extra["data_source"] = (
            f"agent_core.planner.data, seed {arguments.seed}, frame dropout {arguments.frame_dropout}, "
            f"training-only frames {'on' if arguments.extra_frames else 'off'}: "
            f"{arguments.train_examples} train, "
            f"{arguments.val_examples} val, {arguments.test_examples} test requests"
        )
    result = train(
        config,
        records,
        settings.models,
        progress=not arguments.no_progress,
        extra_log=extra,
        stop_after=arguments.stop_after,
    )
    if not result.finished:
        print(
            f"{result.out}: stopped at step {result.steps} of {config.steps}; run the same command to resume"
        )
        return 0
    print(
        f"{result.out}: {result.steps} steps on {result.examples} conversations in {result.seconds:.0f} s, "
        f"final loss {result.final_loss:.4f}"
        + (f" (resumed at step {result.resumed_from})" if result.resumed_from else "")
    )
    return 0


def _planner(kind: str, registry: Any, settings: Any, adapter: Path | None, device: str | None) -> Any:
    if kind == "rules":
        from agent_core.planner.rules import RulesPlanner

        return RulesPlanner(registry, rules=settings.planner.rules)
    from agent_core.planner.llm import LLMPlanner

    return LLMPlanner(registry, settings, adapter=adapter, device=device)


def _run_eval(
    path: Path,
    kind: str,
    settings: Any,
    adapter: Path | None,
    cards: list[Any],
    limit: int | None,
    device: str | None,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from agent_core.planner.evaluate import evaluate, load_items, registry_with

    items = load_items(path, limit)
    registry = registry_with(cards, settings.models)
    planner = _planner(kind, registry, settings, adapter, device)
    if hasattr(planner, "load"):
        try:
            planner.load()  # so that the first request's latency is not the model's load time
        except RuntimeError as exc:
            logger.warning("%s", exc)
    return evaluate(planner, tqdm(items, desc=f"eval {path.name}", unit="request", leave=False), registry)


def _evaluate(arguments: argparse.Namespace) -> int:
    from agent_core.planner.evaluate import summary_line

    settings = _settings(arguments)
    cards = [read_tool_spec(path)[0] for path in arguments.tool]
    try:
        report = _run_eval(
            arguments.file,
            arguments.planner,
            settings,
            arguments.adapter,
            cards,
            arguments.limit,
            arguments.device,
        )
    except (OSError, ValueError) as exc:
        print(f"medagent: {exc}", file=sys.stderr)
        return 2
    if arguments.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    print(summary_line(report))
    for row in report["items"]:
        if not row["ok"]:
            print(f"  wrong: {row['id']}: {row['predicted_tools']} {row['predicted_prompts']}")
    return 0


def _add_tool(arguments: argparse.Namespace) -> int:
    from agent_core.planner import data
    from agent_core.planner.evaluate import summary_line
    from agent_core.planner.llm import DEFAULT_ADAPTER, write_extension
    from agent_core.planner.train import train

    settings = _settings(arguments)
    card, examples, spec = read_tool_spec(arguments.tool)
    cards = _cards(settings)
    if card.name in {c.name for c in cards}:
        raise SystemExit(f"medagent: a tool named {card.name!r} is already built in")
    adapter = arguments.adapter or settings.planner.adapter or DEFAULT_ADAPTER
    split = data.split_new_tool_examples(examples)
    new_train = data.new_tool_draws(
        card, split["train"], cards, arguments.new_examples, "train", arguments.seed
    )
    new_test = data.new_tool_draws(
        card, split["test"], cards, max(20, len(split["test"]) * 4), "test", arguments.seed
    )
    replay = data.replay_draws(card, cards, arguments.replay, arguments.seed + 1)
    mixed = new_train + replay
    import random

    random.Random(arguments.seed).shuffle(mixed)
    all_cards = [*cards, card]
    records = [data.conversation(example, all_cards) for example in mixed]
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "tool.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False), encoding="utf-8")
    new_eval = arguments.out / "new_tool_test_eval.jsonl"
    data.write_jsonl(new_eval, (data.eval_item(e) for e in new_test))
    config = _train_config(arguments, settings, **_continued(Path(adapter)))
    result = train(
        config,
        records,
        settings.models,
        progress=not arguments.no_progress,
        stop_after=arguments.stop_after,
        extra_log={
            "data_source": (
                f"add-tool {card.name}: {len(new_train)} new-tool requests from {len(split['train'])} examples, "
                f"{len(replay)} replayed old-tool requests on studies where it runs (seed {arguments.seed + 1})"
            ),
            "base_adapter": str(adapter),
            "new_tool": card.name,
        },
    )
    if not result.finished:
        print(
            f"{result.out}: stopped at step {result.steps} of {config.steps}; run the same command to resume"
        )
        return 0
    print(f"{result.out}: {result.steps} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}")
    write_extension(arguments.out, Path(adapter), [card.name])
    device = arguments.device
    if arguments.calibrate > 0:
        calibration = calibrate_extension(
            arguments.out, [card], settings, arguments.calibrate, arguments.seed + 2, device
        )
        print(calibration.summary())
    if arguments.evaluate is None:
        return 0
    table = {
        "old tools, before": _run_eval(
            arguments.evaluate, "llm", settings, Path(adapter), [], arguments.eval_limit, device
        ),
        "old tools, after": _run_eval(
            arguments.evaluate, "llm", settings, arguments.out, [card], arguments.eval_limit, device
        ),
        "new tool, before": _run_eval(new_eval, "llm", settings, Path(adapter), [card], None, device),
        "new tool, after": _run_eval(new_eval, "llm", settings, arguments.out, [card], None, device),
    }
    (arguments.out / "add_tool_eval.json").write_text(
        json.dumps(
            {k: {key: v for key, v in r.items() if key != "items"} for k, r in table.items()}, indent=1
        )
    )
    for name, report in table.items():
        print(f"{name:18}  {summary_line(report)}")
    return 0


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate_extension`` saw and chose."""

    adapter: Path
    requests: int  # old-tool requests on studies where an added tool runs
    false_calls: list[tuple[str, float]]  # (request, first-word probability) of plans calling an added tool
    min_first_probability: float

    def summary(self) -> str:
        found = ", ".join(f"{p:.3f}" for _, p in sorted(self.false_calls, key=lambda call: call[1]))
        return (
            f"{self.adapter}: {len(self.false_calls)} of {self.requests} old-tool val requests called an added "
            f"tool (first-word probabilities: {found or 'none'}); min_first_probability "
            f"{self.min_first_probability:.2f}"
        )


def calibrate_extension(
    adapter: Path, cards: list[Any], settings: Any, requests: int, seed: int, device: str | None = None
) -> Calibration:
    """Set ``min_first_probability`` of an adapter ``add-tool`` wrote: the smallest value (in hundredths,
    at least ``EXTENSION_MIN_FIRST_PROBABILITY``) above the first-word probability of every plan in which
    it calls one of the tools it added (``cards``) for one of ``requests`` old-tool requests of the val
    sentence families (never the test ones) on studies where such a tool runs."""
    import math

    from tqdm import tqdm

    from agent_core.planner import data
    from agent_core.planner.evaluate import registry_with
    from agent_core.planner.llm import (
        EXTENSION_MIN_FIRST_PROBABILITY,
        LLMPlanner,
        adapter_layers,
        write_extension,
    )
    from agent_core.planner.rules import StudyContext

    layers = adapter_layers(adapter)
    if len(layers) < 2:
        raise ValueError(f"{adapter}: not an adapter that add-tool wrote (no extension.json)")
    added = layers[0].added_tools
    known = {card.name for card in cards}
    if not added <= known:
        raise ValueError(f"{adapter} adds {sorted(added)}: give the SPEC.json of {sorted(added - known)}")
    old_cards = _cards(settings)
    added_cards = [card for card in cards if card.name in added]
    share = -(-requests // len(added_cards))  # the requests, spread over the studies of each added tool
    examples: list[Any] = []
    for card in added_cards:
        examples += data.replay_draws(card, old_cards, share, seed, split="val")
    planner = LLMPlanner(registry_with(cards, settings.models), settings, adapter=adapter, device=device)
    false_calls: list[tuple[str, float]] = []
    for example in tqdm(examples, desc=f"calibrate {adapter.name}", unit="request", leave=False):
        study = StudyContext(modality=example.modality, body_part=example.body_part)
        call = planner.newest_adapter_call(example.instruction, study)
        if call is not None and added & set(call[0]):
            false_calls.append((example.instruction, call[1]))
    highest = max((probability for _, probability in false_calls), default=0.0)
    threshold = max(EXTENSION_MIN_FIRST_PROBABILITY, min(1.0, math.floor(highest * 100) / 100 + 0.01))
    extends = layers[1].path
    write_extension(adapter, extends, sorted(added), round(threshold, 2))
    return Calibration(adapter, len(examples), false_calls, round(threshold, 2))


def _calibrate(arguments: argparse.Namespace) -> int:
    settings = _settings(arguments)
    cards = [read_tool_spec(path)[0] for path in arguments.tool]
    try:
        calibration = calibrate_extension(
            arguments.adapter, cards, settings, arguments.requests, arguments.seed + 2, arguments.device
        )
    except (OSError, ValueError) as exc:
        print(f"medagent: {exc}", file=sys.stderr)
        return 2
    print(calibration.summary())
    return 0
