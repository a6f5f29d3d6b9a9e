"""The TRL integration: the reward and the curriculum as a TRL reward function, and inside TRL's GRPOTrainer."""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from typing import Any

import pytest
import torch

from medloc_lightning.boxes import ImageGeometry, box_iou
from medloc_lightning.integrations.trl import TRLRewardFunction
from medloc_lightning.parsing import format_answer
from medloc_lightning.rewards import GroundingReward

GT = [10.0, 20.0, 110.0, 220.0]  # 100 x 200


class RecordingSchedule:
    """A minimal schedule: raises tau by 0.1 on every observe and records what it saw."""

    def __init__(self, tau: float = 0.5) -> None:
        self.tau = tau
        self.seen: list[tuple[list[float], float | None]] = []

    def observe(self, ious: Any, progress: float | None = None) -> bool:
        self.seen.append((torch.as_tensor(ious).tolist(), progress))
        self.tau = round(self.tau + 0.1, 10)
        return True


def _answers(*boxes: Any) -> list[str]:
    return [format_answer(b, think="t") if b is not None else "I cannot tell." for b in boxes]


def test_trl_adapter_scores_strings_and_messages() -> None:
    half = (10, 20, 110, 120)  # IoU 0.5 with GT
    completions = _answers(GT, half, (10, 20, 60, 120), None)
    fn = TRLRewardFunction(tau=0.5)
    expected = [1.0, 1.0, 0.0, 0.0]
    assert fn(prompts=["p"] * 4, completions=completions, solution=[GT] * 4) == expected
    messages = [[{"role": "assistant", "content": c}] for c in completions]
    assert fn(prompts=["p"] * 4, completions=messages, solution=[GT] * 4) == expected
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": c}]}] for c in completions]
    assert fn(prompts=["p"] * 4, completions=parts, solution=[GT] * 4) == expected
    # VLM-R1 keeps the ground truth as an answer string
    assert fn(["p"] * 4, completions, solution=[f"<answer> {GT} </answer>"] * 4) == expected


def test_trl_adapter_reward_kinds_and_format_weight() -> None:
    completions = _answers(GT, (10, 20, 110, 120)) + [format_answer((10, 20, 110, 120))]  # last: no <think>
    fn = TRLRewardFunction(GroundingReward(kind="iou", format_weight=0.5), tau=0.9, bbox_column="bbox")
    got = fn(["p"] * 3, completions, bbox=[GT] * 3)
    assert got == pytest.approx([1.5, 1.0, 0.5])


def test_trl_adapter_maps_model_pixels_back_with_sizes() -> None:
    width, height, max_pixels = 1000, 600, 128 * 28 * 28
    geometry = ImageGeometry.from_size(width, height, max_pixels=max_pixels)
    assert (geometry.resized_width, geometry.resized_height) != (width, height)
    in_model = geometry.to_model(GT)
    completions = _answers(in_model, GT)
    fn = TRLRewardFunction(GroundingReward(kind="iou"), max_pixels=max_pixels)
    mapped = fn(["p", "p"], completions, solution=[GT, GT], width=[width] * 2, height=[height] * 2)
    # the answer holds integer model pixels, so the mapped-back box is off by under one model pixel
    back = geometry.to_original(tuple(round(v) for v in in_model))
    assert mapped[0] == pytest.approx(box_iou(torch.tensor(back), torch.tensor(GT)).item(), abs=1e-6)
    assert mapped[0] > 0.97
    assert mapped[1] < 0.7  # a box already in original pixels is wrong once sizes are given
    plain = fn(["p", "p"], completions, solution=[GT, GT])  # no size columns: taken as GT pixels
    assert plain[1] == 1.0 and plain[0] < 0.7


def test_trl_adapter_errors_name_the_problem() -> None:
    fn = TRLRewardFunction()
    with pytest.raises(ValueError, match="solution"):
        fn(["p"], _answers(GT), bbox=[GT])
    with pytest.raises(ValueError, match="row 1"):
        fn(["p", "p"], _answers(GT, GT), solution=[GT, [1, 2, 3]])
    with pytest.raises(ValueError, match="row 0"):
        fn(["p"], _answers(GT), solution=["<answer>none</answer>"])
    with pytest.raises(ValueError, match="1 completions but 2 rows"):
        fn(["p"], _answers(GT), solution=[GT, GT])
    with pytest.raises(ValueError, match="width"):
        fn(["p"], _answers(GT), solution=[GT], width=[100])
    with pytest.raises(ValueError, match="row 0"):
        fn(["p"], _answers(GT), solution=[GT], width=[0], height=[100])
    with pytest.raises(ValueError, match="completion 0"):
        fn(["p"], [42], solution=[GT])
    with pytest.raises(ValueError, match="tau"):
        TRLRewardFunction(tau=1.2)


def test_trl_adapter_rewards_under_current_tau_then_observes() -> None:
    from transformers import TrainerState

    schedule = RecordingSchedule(tau=0.5)
    fn = TRLRewardFunction(schedule=schedule)
    completions = _answers(GT, (10, 20, 110, 120), None)  # IoUs 1, 0.5, 0
    state = TrainerState(global_step=5, max_steps=20, num_input_tokens_seen=900)
    assert fn(["p"] * 3, completions, solution=[GT] * 3, trainer_state=state) == [1.0, 1.0, 0.0]
    assert schedule.seen == [([1.0, 0.5, 0.0], 0.25)]
    assert fn.tau == pytest.approx(0.6)
    # the raise takes effect on the next call: IoU 0.5 now misses
    assert fn(["p"] * 3, completions, solution=[GT] * 3) == [1.0, 0.0, 0.0]
    assert schedule.seen[1][1] is None  # no trainer_state, no progress
    # is_training overrides the rule that reads trainer_state
    fn.is_training = lambda: False
    fn(["p"] * 3, completions, solution=[GT] * 3)
    assert len(schedule.seen) == 2


def test_trl_adapter_observes_only_calls_whose_token_count_grew() -> None:
    from transformers import TrainerState

    schedule = RecordingSchedule(tau=0.5)
    fn = TRLRewardFunction(schedule=schedule)
    completions = _answers(GT, None)
    # TRL counts tokens of training generations only, before scoring them: evaluation repeats the last count
    for tokens, step in ((0, 0), (500, 0), (1000, 1), (1000, 1), (1000, 1), (1500, 1), (1500, 2)):
        fn(["p"] * 2, completions, solution=[GT] * 2,
           trainer_state=TrainerState(global_step=step, max_steps=10, num_input_tokens_seen=tokens))
    assert [progress for _, progress in schedule.seen] == [0.0, 0.1, 0.1]


def test_trl_adapter_follows_trls_reward_function_convention() -> None:
    from transformers import TrainerState
    from trl.trainer.utils import get_callable_name, is_async_callable

    fn = TRLRewardFunction(schedule=RecordingSchedule(), name="medloc_iou")
    assert get_callable_name(fn) == "medloc_iou"
    assert not is_async_callable(fn)
    logged: dict[str, list[float]] = {}
    extras: dict[str, list] = {}
    # Keyword arguments exactly as GRPOTrainer._calculate_rewards passes them (trl 1.x).
    out = fn(
        prompts=[[{"role": "user", "content": "find it"}]] * 2,
        completions=[[{"role": "assistant", "content": c}] for c in _answers(GT, None)],
        completion_ids=[[1, 2], [3]],
        solution=[GT, GT],
        image=[None, None],
        trainer_state=TrainerState(global_step=1, max_steps=10),
        log_extra=lambda column, values: extras.setdefault(column, values),
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
    )
    assert isinstance(out, list) and len(out) == 2 and all(type(v) is float for v in out)
    assert out == [1.0, 0.0]
    assert logged["curriculum/tau"] == [0.5]
    assert logged["curriculum/mean_iou"] == [0.5]


def test_trl_adapter_all_gathers_under_torch_distributed() -> None:
    import torch.distributed as dist

    assert not dist.is_initialized()
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1)
        try:
            schedule = RecordingSchedule()
            fn = TRLRewardFunction(schedule=schedule)
            assert fn(["p", "p"], _answers(GT, None), solution=[GT, GT]) == [1.0, 0.0]
            assert schedule.seen == [([1.0, 0.0], None)]
        finally:
            dist.destroy_process_group()
    assert math.isclose(schedule.tau, 0.6)


class TrainingOnly:
    """A fixed-tau schedule that records, for each observe, whether TRL's model was in training mode."""

    def __init__(self) -> None:
        self.tau, self.trainer, self.modes = 0.5, None, []

    def observe(self, ious: Any, progress: float | None = None) -> bool:
        self.modes.append(self.trainer.model.training)
        return False


@pytest.mark.slow
def test_inside_trl_only_training_rollouts_are_observed(tmp_path) -> None:
    import numpy as np
    from datasets import Dataset
    from PIL import Image
    from transformers import Qwen2_5_VLForConditionalGeneration
    from trl import GRPOConfig, GRPOTrainer

    from medloc_lightning.parsing import build_prompt
    from medloc_lightning.policies.qwen.processor import load_processor
    from medloc_lightning.policies.qwen.tiny import tiny_qwen_path

    model_dir = str(tiny_qwen_path(tmp_path / "model"))
    rng = np.random.default_rng(0)
    rows = [{"prompt": [{"role": "user", "content": build_prompt("the lesion")}],
             "image": Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)),
             "solution": [4.0, 4.0, 30.0, 30.0]} for _ in range(8)]
    data = Dataset.from_list(rows)
    schedule = TrainingOnly()
    reward = TRLRewardFunction(schedule=schedule, size_columns=None)
    calls = []
    original = reward.__call__

    with warnings.catch_warnings():  # TRL's own deprecation notices
        warnings.simplefilter("ignore")
        config = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, per_device_train_batch_size=4,
                            per_device_eval_batch_size=4, num_generations=2, max_completion_length=4, max_steps=3,
                            eval_strategy="steps", eval_steps=1, learning_rate=1e-5, logging_steps=1, report_to="none",
                            save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
        trainer = GRPOTrainer(model=Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir),
                              reward_funcs=reward, args=config, train_dataset=data, eval_dataset=data.select(range(4)),
                              processing_class=load_processor(model_dir, min_pixels=56 * 56, max_pixels=56 * 56))
        schedule.trainer = trainer

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(trainer.model.training)
            return original(*args, **kwargs)

        trainer.reward_funcs = [spy]
        trainer.train()
    assert calls.count(False) >= 3  # TRL scored evaluation rollouts with our reward...
    assert schedule.modes == [True] * calls.count(True)  # ...but only training rollouts reached the schedule
