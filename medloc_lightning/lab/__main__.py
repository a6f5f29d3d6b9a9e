"""``python -m medloc_lightning.lab``: the curriculum lab from an installed package, no source checkout needed.

    python -m medloc_lightning.lab quickstart            # `make lab`: configs/lab_quickstart.yaml, fit then test
    python -m medloc_lightning.lab run fixed_tau         # one method of the paper's tables on BoxPolicy
    python -m medloc_lightning.lab prior --out runs/prior  # the BoxPolicy grounding prior, and its report
    python -m medloc_lightning.lab configs               # where the shipped configs are (for `medloc --config`)
"""
from __future__ import annotations

import json
from typing import Any, Sequence


def quickstart(out: str = "runs/lab_quickstart", data: str = "data/synthetic_quickstart_lab",
               steps: int | None = None, images: int | None = None) -> dict[str, float]:
    """Train and test the lab's quickstart (``configs/lab_quickstart.yaml``, as `medloc fit` reads it).

    Args:
        out: the run's folder (logs, config, checkpoints, curriculum plot).
        data: where the synthetic data is generated (once).
        steps: optimizer steps (default: the config's).
        images: synthetic images to generate (default: the config's).
    """
    import lightning.pytorch as pl

    from medloc_lightning.cli import MedlocCLI, Trainer
    from medloc_lightning.lab.methods import configs_folder
    from medloc_lightning.module import GroundingModule

    args = ["--config", str(configs_folder() / "lab_quickstart.yaml"), f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}", f"--data.init_args.root={data}"]
    args += [f"--trainer.max_steps={steps}"] * (steps is not None) + [f"--data.init_args.n={images}"] * (images is not None)
    cli = MedlocCLI(GroundingModule, pl.LightningDataModule, trainer_class=Trainer, subclass_mode_model=True,
                    subclass_mode_data=True, seed_everything_default=0, save_config_kwargs={"overwrite": True},
                    args=args, run=False, auto_configure_optimizers=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {k: float(v) for k, v in cli.trainer.test(cli.model, datamodule=cli.datamodule)[0].items()}


def run(method: str, steps: int = 600, seed: int = 0, data: str = "data/lab", images: int = 1200,
        init: str | None = None) -> dict[str, Any]:
    """Train BoxPolicy with one method of the paper's tables for ``steps`` optimizer steps, then test it.

    Args:
        method: ``medloc`` or a baseline or ablation overlay's name (``fixed_tau``, ``raw_iou``, ...).
        steps: optimizer steps.
        seed: the sampling seed (and the initial weights without ``init``).
        data: where the lab's synthetic data is generated (once).
        images: synthetic images to generate.
        init: a BoxPolicy export to start from (e.g. ``prior``'s), instead of random weights.
    """
    from medloc_lightning.lab.runs import lab_data, run as run_method

    result = run_method(method, lab_data(data, n=images, seed=0), steps=steps, seed=seed, init=init,
                        regime="random_init" if init is None else "prior")
    return {k: v for k, v in result.to_dict().items() if k not in ("taus", "hit_rates", "reward_stds", "iou_margins")}


def prior(out: str = "runs/lab_prior", data: str = "data/lab", images: int = 1200,
          steps: int | None = None) -> dict[str, Any]:
    """Build the lab's grounding prior (BoxPolicy warm-started by SFT on another synthetic distribution) into
    ``out/policy`` and report it on the lab's data.

    Args:
        out: where the prior, its source data and its report go.
        data: the lab's (target) data.
        images: synthetic target images to generate.
        steps: SFT steps (default: the shipped recipe's).
    """
    from dataclasses import replace

    from medloc_lightning.lab.runs import REGIMES, build_prior, lab_data

    recipe = REGIMES["prior"].prior
    path, report = build_prior(out, recipe if steps is None else replace(recipe, steps=steps),
                               lab_data(data, n=images, seed=0))
    return {"policy": path, **report}


def configs() -> str:
    """The folder of the shipped configs, for ``medloc fit --config FOLDER/...``."""
    from medloc_lightning.lab.methods import configs_folder

    return str(configs_folder())


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m medloc_lightning.lab COMMAND``; a user error ends in one ``medloc-lab: error: ...`` line."""
    from jsonargparse import CLI

    from medloc_lightning.user_errors import report_user_errors

    result = report_user_errors("medloc-lab", lambda: CLI([quickstart, run, prior, configs], args=argv,
                                                           description=__doc__.splitlines()[0]))
    print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
