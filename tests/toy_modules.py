"""Small LightningModules that keep the curriculum callback's two-line contract (shared by several tests)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning.pytorch as pl

from medloc_lightning.boxes import box_iou
from medloc_lightning.parsing import parse_box
from medloc_lightning.policies import GroundingPolicy, Rollout


class ScriptedIoUs(Dataset):
    """Item i is a fixed, seeded vector of IoUs: lets tests know exactly what the callback must observe."""

    def __init__(self, n: int = 24, per_item: int = 4, seed: int = 0, ramp: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        base = torch.linspace(0.2, 1.0, n) if ramp else torch.full((n,), 0.5)
        self.items = [(base[i] + 0.1 * torch.randn(per_item, generator=g)).clamp(0, 1) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]


class ScriptedModule(pl.LightningModule):
    """The batch *is* this step's IoUs; a real parameter is trained so optimizers and checkpoints are real."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.lr = lr
        self.iou_threshold = 0.99  # overwritten by the callback before the first step
        self.seen_taus: list[float] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        self.seen_taus.append(float(self.iou_threshold))
        rewards = (batch >= self.iou_threshold).float()
        loss = ((self.w - rewards.mean()) ** 2).sum()
        return {"loss": loss, "ious": batch}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class IndexedModule(ScriptedModule):
    """Batch i's IoUs are rows ``i * rows ... (i + 1) * rows`` of this rank's `ScriptedIoUs`, whatever the loader
    yields: a run resumed mid-epoch from a plain loader sees exactly what the uninterrupted run saw."""

    def __init__(self, rows: int = 1, per_item: int = 3, n: int = 24) -> None:
        super().__init__()
        self.rows, self.per_item, self.n = rows, per_item, n

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        items = ScriptedIoUs(self.n, self.per_item, seed=self.global_rank).items  # ramps up over n items
        ious = torch.stack(items[batch_idx * self.rows: (batch_idx + 1) * self.rows])
        return super().training_step(ious if self.rows > 1 else ious[0], batch_idx)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        pass


class StateTrace(pl.Callback):
    """The curriculum schedule's state after each observed step (list it after the curriculum callback)."""

    def __init__(self, curriculum: pl.Callback) -> None:
        self.curriculum, self.states = curriculum, []

    def on_train_batch_end(self, *args) -> None:
        state = self.curriculum.schedule.state_dict()
        if state["num_steps"] != (self.states[-1]["num_steps"] if self.states else 0):
            self.states.append(state)


def scripted_loader(n: int = 24, per_item: int = 4, batch_size: int = 1, seed: int = 0) -> DataLoader:
    return DataLoader(ScriptedIoUs(n, per_item, seed), batch_size=batch_size, shuffle=False)


class GaussianBoxRL(pl.LightningModule):
    """A genuine (tiny) GRPO-style learner: a Gaussian over one box, rewarded 1[IoU >= tau]."""

    def __init__(self, group: int = 32, lr: float = 0.1, std: float = 4.5) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.tensor([20.0, 20.0, 60.0, 60.0]))
        self.log_std = nn.Parameter(torch.tensor(float(std)).log())
        self.target = torch.tensor([30.0, 30.0, 50.0, 50.0])
        self.group, self.lr = group, lr
        self.iou_threshold = 0.5

    def training_step(self, batch, batch_idx):
        dist = torch.distributions.Normal(self.mu, self.log_std.exp())
        boxes = dist.sample((self.group,))
        ious = box_iou(boxes, self.target.expand_as(boxes))
        rewards = (ious >= self.iou_threshold).float()
        adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
        loss = -(adv * dist.log_prob(boxes).sum(-1)).mean()
        return {"loss": loss, "ious": ious}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def dummy_loader(n: int) -> DataLoader:
    return DataLoader(torch.zeros(n, 1), batch_size=1)


class ScriptedPolicy(GroundingPolicy):
    """Answers from a fixed script, one learnable log-prob per script entry: module maths checkable by hand.

    Completion g of every prompt is ``answers[g % len(answers)]``; all its T tokens have log-prob
    ``theta[g % len(answers)]``. Records whose id is in ``reject`` are refused like a too-long prompt.
    """

    def __init__(self, answers: list[str], tokens: int = 3, reject: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.answers, self.tokens, self.reject = answers, tokens, set(reject)
        self.theta = nn.Parameter(torch.zeros(len(answers)))
        self.reference: torch.Tensor | None = None

    def enable_reference(self) -> None:
        self.reference = self.theta.detach().clone()

    def sample(self, batch, num_generations, temperature):
        kept = [i for i, r in enumerate(batch) if r["id"] not in self.reject]
        rejected = {i: "prompt too long (scripted)" for i, r in enumerate(batch) if r["id"] in self.reject}
        which = torch.tensor([g % len(self.answers) for _ in kept for g in range(num_generations)], dtype=torch.long)
        texts = [self.answers[k] for k in which.tolist()]
        boxes = torch.tensor([list(parse_box(t) or (float("nan"),) * 4) for t in texts], dtype=torch.float32)
        mask = torch.ones(len(texts), self.tokens)
        return Rollout(num_generations, texts, boxes.reshape(-1, 4), mask, state=which, kept=kept, rejected=rejected)

    def logprobs(self, rollout, rows=None, *, reference=False):
        which = rollout.state if rows is None else rollout.state[rows]
        theta = self.reference if reference else self.theta
        return theta[which].unsqueeze(1).expand(-1, self.tokens)

    def predict(self, batch):
        texts = [self.answers[0]] * len(batch)
        box = list(parse_box(self.answers[0]) or (float("nan"),) * 4)
        return texts, torch.tensor([box] * len(batch), dtype=torch.float32)

    def sft_loss(self, batch):
        return (self.theta ** 2).sum()


def square_records(n: int, size: int = 32) -> list[dict]:
    """Records with GT box [0, 0, 10, 10] on a blank image (for scripted policies)."""
    from PIL import Image

    img = Image.new("RGB", (size, size))
    return [{"id": f"r{i}", "image": img, "query": "the lesion", "bbox": [0.0, 0.0, 10.0, 10.0], "width": size,
             "height": size} for i in range(n)]


def record_loader(records: list[dict], batch_size: int) -> DataLoader:
    return DataLoader(records, batch_size=batch_size, collate_fn=list, shuffle=False)
