"""The policy protocol is closed: a policy written against `GroundingPolicy` alone trains in the modules."""
from __future__ import annotations

import warnings

import torch
from torch import nn

import lightning.pytorch as pl
from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.curriculum import ThresholdCurriculum
from medloc_lightning.module import GRPOGroundingModule
from medloc_lightning.parsing import format_answer
from medloc_lightning.policies import GroundingPolicy, Rollout
from medloc_lightning.policies.base import Sharding

from toy_modules import record_loader, square_records


class GaussianCornerPolicy(GroundingPolicy):
    """Boxes of a fixed 10 x 10 size whose top-left corner is drawn from a learned Gaussian: the abstract
    methods and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.corner = nn.Parameter(torch.tensor([5.0, 5.0]))
        self.log_std = nn.Parameter(torch.tensor(0.3))

    def _dist(self) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.corner, self.log_std.exp())

    def sample(self, batch, num_generations, temperature):
        with torch.no_grad():
            corners = self._dist().sample((len(batch) * num_generations,))
        boxes = torch.cat([corners, corners + 10.0], 1)
        texts = [format_answer(b.tolist()) for b in boxes]
        return Rollout(num_generations, texts, boxes, torch.ones(len(texts), 1), state=corners)

    def logprobs(self, rollout, rows=None, *, reference=False):
        corners = rollout.state if rows is None else rollout.state[rows]
        return self._dist().log_prob(corners).sum(-1, keepdim=True)

    def predict(self, batch):
        box = torch.cat([self.corner, self.corner + 10.0]).detach()
        return [format_answer(box.tolist())] * len(batch), box.expand(len(batch), 4).clone()


def test_a_policy_of_only_the_abstract_methods_trains_under_grpo_and_the_curriculum() -> None:
    pl.seed_everything(0)
    policy = GaussianCornerPolicy()
    attributes = set(vars(policy))
    curriculum = ThresholdCurriculumCallback(ThresholdCurriculum(window=5))
    module = GRPOGroundingModule(policy, num_generations=8, temperature=1.0, learning_rate=0.05,
                                 loss_type="dr_grpo", seed=0)  # dr_grpo reads max_completion_length
    trainer = pl.Trainer(accelerator="cpu", max_steps=80, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[curriculum])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, record_loader(square_records(4), 2))
    # GT is [0, 0, 10, 10]: the corner must move from (5, 5) towards the origin, and tau must have risen
    assert float(policy.corner.detach().abs().max()) < 3.0
    assert curriculum.schedule.num_raises >= 1
    assert policy.sharding == Sharding() and policy.device == torch.device("cpu")
    assert policy.max_completion_length == 1
    assert set(vars(policy)) - attributes <= {"sharding"}  # the module wrote nothing undeclared
