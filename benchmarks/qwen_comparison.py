"""The paper's main comparison on the Qwen2.5-VL path: every method starts from the shipped grounding prior.

Each run is ``configs/quickstart.yaml`` plus one overlay from ``configs/baselines/`` (none for MedLoc-R1), read
exactly as ``medloc fit --config configs/quickstart.yaml --config OVERLAY`` reads them, for the same number of
optimizer steps on the same target data; only the seed changes across a method's runs (GRPO: the sampling; SFT,
which samples nothing: the data order). The SFT baseline continues the prior's SFT on the target with the
quickstart's learning rate and batch size (the overlay's own values are sized for the 3B recipe). Each run is
tested greedily on the target's test split.

    python benchmarks/qwen_comparison.py                 # 5 methods x 3 seeds, about 18 min on 2 cores
    python benchmarks/qwen_comparison.py --report-only   # print the table from the saved JSON
    python benchmarks/qwen_comparison.py --preset lab --out benchmarks/results/qwen_comparison_lab.json
    python benchmarks/qwen_comparison.py --out benchmarks/results/qwen_comparison_lab.json --report-only

Results: benchmarks/results/qwen_comparison.json; the tables are printed as Markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # a script run from a checkout imports this checkout

from reproduce import mean_std  # noqa: E402  (the same mean ± sample std as the lab's tables)

RESULTS = ROOT / "benchmarks" / "results" / "qwen_comparison.json"
CONFIG = ROOT / "configs" / "quickstart.yaml"
METHODS: dict[str, tuple[str | None, str]] = {
    "prior": (None, "the grounding prior, untrained"),
    "medloc": (None, "MedLoc-R1: the quickstart's curriculum"),
    "fixed_tau": ("baselines/fixed_tau.yaml", "VLM-R1: fixed tau = 0.5"),
    "v_triune": ("baselines/v_triune.yaml", "V-Triune: 0.85/0.95/0.99 by progress, gated IoU"),
    "raw_iou": ("baselines/raw_iou.yaml", "Raw IoU reward"),
    "sft": ("baselines/sft.yaml", "SFT continued on the target"),
}
METRICS = ("acc@0.5", "acc@0.75", "pseudo_map", "miou")


TARGET: list[str] = []
"""Extra options that move every run to another target preset (``--preset``)."""


def _cli_args(method: str, seed: int, steps: int) -> list[str]:
    overlay = METHODS[method][0]
    args = ["--config", str(CONFIG)]
    if overlay:
        args += ["--config", str(ROOT / "configs" / overlay)]
    args += [f"--seed_everything={seed}", f"--trainer.max_steps={steps}", *TARGET]
    # GRPO's seed sets its sampling (the data order is the same for every seed, so seeds pair across methods);
    # SFT samples nothing, so its seed sets the data order instead.
    args += [f"--model.init_args.seed={seed}"] if method != "sft" else [f"--data.init_args.seed={seed}"]
    return args


def _cli(args: list[str], instantiate: bool = True) -> Any:
    """`MedlocCLI` on ``args`` as `medloc fit` reads them, with the model, data and trainer built, or (with
    ``instantiate=False``) only the parsed config in ``.config``."""
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # ours are the args
    from medloc_lightning.cli import MedlocCLI, Trainer
    from medloc_lightning.module import GroundingModule

    import lightning.pytorch as pl

    class _ParseOnly(MedlocCLI):
        def instantiate_classes(self) -> None:
            pass

    cls = MedlocCLI if instantiate else _ParseOnly
    return cls(GroundingModule, pl.LightningDataModule, trainer_class=Trainer, subclass_mode_model=True,
               subclass_mode_data=True, args=args, run=False, auto_configure_optimizers=False)


def _build(method: str, seed: int, steps: int) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    """The model, data and curriculum callback the configs give, as `medloc fit` would build them."""
    from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback

    extra: list[str] = []
    if method == "sft":  # the quickstart's learning rate and prompts per step, not the 3B recipe's
        base = _cli(_cli_args("medloc", seed, steps), instantiate=False).config
        extra = [f"--model.init_args.learning_rate={base['model']['init_args']['learning_rate']}",
                 f"--data.init_args.batch_size={base['data']['init_args']['batch_size']}"]
    cli = _cli([*_cli_args(method, seed, steps), *extra])
    curricula = [cb for cb in cli.trainer.callbacks if isinstance(cb, ThresholdCurriculumCallback)]
    return cli.model, cli.datamodule, curricula, {"learning_rate": cli.model.learning_rate}


def run_one(job: tuple[str, int, int, list[str]]) -> dict[str, Any]:
    """Train one method with one seed (or only test the prior), then test it."""
    method, seed, steps, target = job
    TARGET[:] = target
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import lightning.pytorch as pl

    from medloc_lightning.lab import EarlyGroups

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, data, curricula, info = _build(method, seed, steps)
        early = EarlyGroups(steps)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=0 if method == "prior" else steps,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                             callbacks=[*curricula, early])
        if method != "prior":
            trainer.fit(model, data)
        test = trainer.test(model, data, verbose=False)[0]
    schedule = curricula[0].schedule if curricula and method != "prior" else None
    return {
        "method": method, "seed": seed, "steps": int(trainer.global_step), **info,
        "test": {k.removeprefix("test/"): float(v) for k, v in test.items()},
        "zero_std_early": early.zero_std_early, "all_fail_early": early.all_fail_early,
        "num_raises": None if schedule is None else schedule.num_raises,
        "final_tau": None if schedule is None else schedule.tau,
        "raise_steps": None if schedule is None else [int(e["step"]) for e in schedule.events],
        "wall_s": time.perf_counter() - start,
    }


def report(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per method (mean ± sample std over seeds, in %), early group fractions and τ raises."""
    rows = ["| method | runs | Acc@0.5 | Acc@0.75 | pseudo-mAP | mIoU | zero-std groups, first 20% | "
            "all-fail groups, first 20% | τ raises (final τ) |", "|---" * 9 + "|"]
    for method, (_, description) in METHODS.items():
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        raises = [r["num_raises"] for r in runs if r["num_raises"] is not None]
        taus = [r["final_tau"] for r in runs if r["final_tau"] is not None]
        raise_text = (f"{statistics.fmean(raises):.1f} ({min(taus):.2f}–{max(taus):.2f})" if raises else "–")
        rows.append(f"| {description} | {len(runs)} | "
                    + " | ".join(mean_std([r["test"][m] for r in runs]) for m in METRICS)
                    + f" | {mean_std([r['zero_std_early'] for r in runs])} | "
                      f"{mean_std([r['all_fail_early'] for r in runs])} | {raise_text} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the quickstart's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true", help="replace these methods' runs in --out, keep the rest")
    parser.add_argument("--preset", default=None,
                        help="another target preset (its data goes to data/synthetic_quickstart_<preset>_84)")
    args = parser.parse_args(argv)
    if args.report_only:
        print(report(json.loads(args.out.read_text())["runs"]))
        return
    if args.steps is None:
        import yaml

        args.steps = int(yaml.safe_load(CONFIG.read_text())["trainer"]["max_steps"])
    if args.preset:
        TARGET[:] = [f"--data.init_args.preset={args.preset}",
                     f"--data.init_args.root=data/synthetic_quickstart_{args.preset}_84"]
    jobs = [(m, s, args.steps, list(TARGET)) for m in args.methods
            for s in (args.seeds if m != "prior" else args.seeds[:1])]
    started = time.perf_counter()
    _prepare_data(args.seeds[0], args.steps)
    with ProcessPoolExecutor(args.workers) as pool:
        results = []
        for result in pool.map(run_one, jobs):
            results.append(result)
            print(f"{result['method']} seed {result['seed']}: " + ", ".join(
                f"{m} {result['test'][m]:.3f}" for m in METRICS) + f" ({result['wall_s']:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - started
    if args.merge and args.out.exists():
        saved = json.loads(args.out.read_text())
        results = [r for r in saved["runs"] if r["method"] not in args.methods] + results
        results.sort(key=lambda r: (list(METHODS).index(r["method"]), r["seed"]))
        wall += saved.get("wall_s", 0.0)
    args.out.write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "preset": args.preset, "wall_s": wall,
                                    "runs": results}, indent=1))
    print(report(results))
    print(f"\n{len(jobs)} runs in {(time.perf_counter() - started) / 60:.1f} min; results in {args.out}")


def _prepare_data(seed: int, steps: int) -> None:
    """Generate the target data once, before the workers read it (only the data module is built)."""
    import importlib

    data = _cli(_cli_args("medloc", seed, steps), instantiate=False).config["data"].as_dict()
    module, _, name = data["class_path"].rpartition(".")
    getattr(importlib.import_module(module), name)(**data["init_args"]).prepare_data()


if __name__ == "__main__":
    sys.exit(main())
