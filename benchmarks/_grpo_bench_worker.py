"""Worker entry of the GRPO-step benchmarks: ``python -m benchmarks._grpo_bench_worker SIDE SETTINGS_JSON RESULT_PATH``.

Runs one side in this (fresh) interpreter with the settings' thread count and writes its result as JSON.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks._grpo_bench_common import BenchSettings, configure_threads, environment


def main(argv: list[str]) -> None:
    side, settings_json, result_path = argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = BenchSettings(**json.loads(settings_json))
    configure_threads(settings.threads)
    if side in ("ours", "ours_plain"):
        from benchmarks._grpo_bench_ours import run_ours

        result = run_ours(settings, prefill_once=side == "ours")
    elif side == "trl":
        from benchmarks._grpo_bench_trl import run_trl

        result = run_trl(settings)
    else:
        raise ValueError(f"side must be one of 'ours', 'ours_plain', 'trl', got {side!r}")
    import torch

    result["torch_threads"] = torch.get_num_threads()
    result["environment"] = environment()
    if settings.device.startswith("cuda"):
        result["device_name"] = torch.cuda.get_device_name()
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
