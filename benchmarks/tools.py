"""Per-tool latency and peak memory on the chest CT and the CR chest radiograph of ../shared/data.

Run from the repository root: ``.venv/bin/python benchmarks/tools.py [--frames 10] [--device auto]``.

Each (tool, image) pair runs in a fresh Python process, so that its peak resident memory (``ru_maxrss``)
is its own and its model load is a cold one. The table prints the engine that ran, the load time (the
first ``load()``: weights from disk), the first run and a second run (warm), and the peak RSS of the
process. ``--frames`` keeps that many middle slices of the CT (LiteMedSAM costs about 1 s per slice on two
CPU cores; ``--frames 0`` runs the whole series). On a GPU machine pass ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (tool, parameters) per image; "$boxes" is replaced by the grounding boxes of the same image
CASES = {
    "ct": [
        ("grounding", {"prompts": ["left lung", "right lung"]}),
        ("segmentation", {"boxes": "$boxes"}),
        ("grounded_segmentation", {"prompts": ["left lung", "right lung"]}),
        ("classification", {}),
        ("report_generation", {}),
        ("retrieval", {"question": "How are lung volumes measured on CT?"}),
        ("vqa", {"question": "How large is the left lung?"}),
    ],
    "cr": [
        ("grounding", {"prompts": ["left lung", "right lung"]}),
        ("segmentation", {"boxes": "$boxes"}),
        ("grounded_segmentation", {"prompts": ["left lung", "right lung"]}),
        ("classification", {}),
        ("vqa", {"question": "What body part is this?"}),
    ],
}

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import numpy as np
from agent_core.registry import ToolRegistry
from config.settings import ModelsSection
from dicom_node.load import load_volume, read_series
from dicom_node.pipeline import tool_input_for

image, tool_name, params, frames, device = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
folder = {"ct": "ct_chest_lidc0314", "cr": "cr_chest_philips_j2k"}[image]
shared = Path(sys.argv[1]).parent / "shared" / "data" / folder
volume = load_volume(read_series(sorted(p for p in shared.iterdir() if p.suffix == ".dcm")))
registry = ToolRegistry.default(ModelsSection(device=device))
def make_input(values):
    tool_input = tool_input_for(volume, values, "", device)
    if frames and tool_input.image.shape[0] > frames:
        start = (tool_input.image.shape[0] - frames) // 2
        tool_input.image = tool_input.image[start : start + frames]
    return tool_input
if params.get("boxes") == "$boxes":
    grounded = registry.get("grounding").run(make_input({"prompts": ["left lung", "right lung"]}))
    params["boxes"] = [{"label": b.label, "frame": b.frame, "xyxy": list(b.xyxy)} for b in grounded.boxes]
tool = registry.get(tool_name)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter(); tool.load(); load_s = time.perf_counter() - started
tool_input = make_input(params)
if tool_name == "report_generation" or tool_name == "vqa":
    tool_input.prior_results = [{"tool": "grounded_segmentation", "status": "ok", "engine": "benchmark",
        "structures": {}, "boxes": {}, "labels": {}, "text": "", "sources": [], "error": "",
        "measurements": [{"label": "left lung", "name": "Volume", "value": 1928.4, "unit": "mL"},
                         {"label": "right lung", "name": "Volume", "value": 915.2, "unit": "mL"}]}]
started = time.perf_counter(); result = tool.run(tool_input); first_s = time.perf_counter() - started
started = time.perf_counter(); tool.run(tool_input); second_s = time.perf_counter() - started
print(json.dumps({"engine": result.engine, "status": result.status.value, "error": result.error[:80],
    "load_s": load_s, "first_s": first_s, "second_s": second_s, "frames": int(tool_input.image.shape[0]),
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "baseline_mb": baseline / 1024}))
"""


def run_case(image: str, tool: str, params: dict, frames: int, device: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT), image, tool, json.dumps(params), str(frames), device],
        capture_output=True, text=True, timeout=3600, cwd=ROOT,
    )  # fmt: skip
    if completed.returncode != 0:
        return {"engine": "-", "status": "crashed", "error": completed.stderr.strip().splitlines()[-1][:80]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10, help="middle CT slices to run on; 0 = all")
    parser.add_argument("--device", default="cpu", help="models.device: cpu, cuda, auto ... (default cpu)")
    parser.add_argument("--only", help="comma-separated tool names")
    arguments = parser.parse_args(argv)
    only = set(arguments.only.split(",")) if arguments.only else None
    print(
        f"{'image':5} {'tool':22} {'engine':38} {'frames':>6} {'load s':>7} {'1st s':>7} {'2nd s':>7}"
        f" {'peak MB':>8}  status"
    )
    for image, cases in CASES.items():
        for tool, params in cases:
            if only and tool not in only:
                continue
            row = run_case(image, tool, dict(params), arguments.frames, arguments.device)
            if row["status"] == "crashed":
                print(
                    f"{image:5} {tool:22} {'-':38} {'':>6} {'':>7} {'':>7} {'':>7} {'':>8}  crashed: {row['error']}"
                )
                continue
            print(
                f"{image:5} {tool:22} {row['engine'][:38]:38} {row['frames']:6d} {row['load_s']:7.2f}"
                f" {row['first_s']:7.2f} {row['second_s']:7.2f} {row['peak_mb']:8.0f}  {row['status']}"
                + (f": {row['error']}" if row["error"] else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
