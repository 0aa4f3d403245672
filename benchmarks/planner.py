"""Plan latency of the rules planner and the LLM planner (SmolLM2-135M + the committed LoRA adapter) on CPU.

Run from the repository root: ``.venv/bin/python benchmarks/planner.py [--requests 40] [--threads 2]``.

The requests are a fixed sample of the committed adapter's held-out ``test_eval.jsonl`` (phrasings it never
saw). The table gives, per planner, the cold load (the LLM's weights and the adapter merge), then the time of
each ``plan`` call: median, 95th percentile and mean, with the tool accuracy and JSON validity on the same
requests. The goal for the LLM planner is a median under 1.5 s on two cores.

``--adapter DIR --tool SPEC.json`` times an adapter that ``medagent planner add-tool`` wrote, with its tool
registered by its card: on the studies where that tool runs, a request the added adapter leaves to the old
one is planned twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=40, help="how many held-out requests (default 40)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--adapter", type=Path, default=None, help="default: the committed adapter")
    parser.add_argument(
        "--tool", type=Path, action="append", default=[], help="register a tool by its SPEC.json card"
    )
    arguments = parser.parse_args()

    import torch

    from agent_core.planner.evaluate import evaluate, load_items, registry_with, sample_items
    from agent_core.planner.llm import DEFAULT_ADAPTER, LLMPlanner
    from agent_core.planner.rules import RulesPlanner
    from agent_core.planner.training_commands import read_tool_spec
    from agent_core.registry import ToolRegistry
    from config.settings import ModelsSection, Settings

    torch.set_num_threads(arguments.threads)
    items = sample_items(load_items(DEFAULT_ADAPTER / "test_eval.jsonl"), arguments.requests)
    cards = [read_tool_spec(path)[0] for path in arguments.tool]
    registry = registry_with(cards) if cards else ToolRegistry.default(entry_points=False)
    rows = []

    started = time.perf_counter()
    rules = RulesPlanner(registry)
    rules_load = time.perf_counter() - started
    rows.append(("rules", rules_load, evaluate(rules, items, registry)))

    llm = LLMPlanner(
        registry, Settings(models=ModelsSection(device=arguments.device)), adapter=arguments.adapter
    )
    started = time.perf_counter()
    llm.load()
    llm_load = time.perf_counter() - started
    rows.append(("llm", llm_load, evaluate(llm, items, registry)))

    print(f"{len(items)} held-out requests, {arguments.threads} torch threads, device {arguments.device}")
    print(
        f"{'planner':8}  {'load s':>7}  {'median s':>8}  {'p95 s':>6}  {'mean s':>6}  {'tool acc':>8}  {'JSON':>5}"
    )
    for name, load, report in rows:
        latency = report["latency_s"]
        print(
            f"{name:8}  {load:7.2f}  {latency['median']:8.3f}  {latency['p95']:6.3f}  {latency['mean']:6.3f}"
            f"  {report['tool_accuracy']:8.3f}  {report['json_valid_rate']:5.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
