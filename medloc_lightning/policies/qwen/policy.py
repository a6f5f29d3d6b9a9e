"""`QwenVLPolicy`: Qwen2.5-VL (any size) as a grounding policy, with LoRA/QLoRA and a reference model.

Prompts follow VLM-R1's REC set-up: one user turn holding the image and the templated query, no system
prompt of our own, the chat template's generation prompt. Sampling and scoring run through the same
processor outputs, so the teacher-forced log-probs reproduce what generation saw (positions included).
Boxes leave the policy in original-image pixels via `ImageGeometry.from_grid_thw`.

Generation always runs in train mode with every dropout off (`train_mode_without_dropout`): Qwen2.5-VL has
no other train/eval difference, bitsandbytes 4-bit on CPU breaks the next backward after an eval-mode
forward, and sampling from one deterministic policy keeps old and new log-probs comparable. LoRA dropout
is therefore active only in gradient passes.
"""
from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from medloc_lightning import distributed
from medloc_lightning.boxes import ImageGeometry
from medloc_lightning.errors import CheckpointError, ConfigError
from medloc_lightning.parsing import DEFAULT_PROMPT_TEMPLATE, format_answer, parse_box
from medloc_lightning.data.records import Record
from medloc_lightning.policies.base import GroundingPolicy, Rollout, Sharding
from medloc_lightning.policies.qwen.batch import (
    append_completions,
    shared_image_features,
    completion_mask,
    select_prompts,
    token_logprobs,
)
from medloc_lightning.policies.qwen.loading import (
    check_quantization,
    DTypeName,
    Quantization,
    adapter_base,
    apply_lora,
    enable_gradient_checkpointing,
    load_adapter,
    load_base_model,
    lora_config,
    resolve_model_name,
    resolve_dtype,
    vision_tower,
    wrap_classes,
)
from medloc_lightning.policies.qwen.model import base_model, train_mode_without_dropout
from medloc_lightning.policies.qwen.prefill import (
    caches_through_backward,
    generate_with_shared_prefill,
    score_with_shared_prefill,
)
from medloc_lightning.policies.qwen.processor import VISION_SPECIAL_TOKENS, load_processor
from medloc_lightning.policies.qwen.prompts import EncodedPrompts, encode_prompts, prompt_text

if TYPE_CHECKING:  # jsonargparse resolves it for the CLI; importing peft here would load bitsandbytes
    from peft import LoraConfig

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class QwenRolloutState:
    """What `QwenVLPolicy.logprobs` needs to re-score a rollout."""

    prompts: dict[str, Tensor]
    """Processor outputs of the B kept prompts (left-padded; not expanded G times)."""
    completion_ids: Tensor
    """[N, T] sampled token ids (pad after the first EOS)."""
    temperature: float
    prompt_length: int


class QwenVLPolicy(GroundingPolicy):
    """A Qwen2.5-VL checkpoint (local folder, hub name or peft adapter folder) as a `GroundingPolicy`.

    ``model_name_or_path="medloc:tiny-qwen2.5-vl"`` builds and uses the tiny offline test model.

    ``prefill_once`` (default) runs each prompt's text prefill once and shares its KV cache among the G
    samples and scored completions of that prompt (`qwen_prefill`; same log-probs, same samples for a
    seed); ``False`` is transformers' plain path, which sharded models always take.

    ``reference_dtype`` (default: ``dtype``) is the dtype of the frozen reference copy a full fine-tune keeps
    when beta > 0: ``"bfloat16"`` halves it next to fp32 master weights (under bf16 autocast its matmuls run
    in bf16 either way).

    Weights load lazily in `configure` (idempotent), so Lightning's ``configure_model`` can run it under a
    sharding strategy; the processor loads at construction. ``lora`` takes any ``peft.LoraConfig`` (DoRA,
    rsLoRA, ``modules_to_save``, ...); ``lora_r > 0`` with ``lora_alpha``, ``lora_dropout`` and
    ``lora_target_modules`` is the short form of a plain one. With neither, the whole model is fine-tuned.
    """

    frozen_weights_reloadable = True  # frozen weights (base model under LoRA, vision tower) come from the checkpoint

    def __init__(
        self,
        model_name_or_path: str,
        min_pixels: int = 3136,
        max_pixels: int = 12845056,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        max_new_tokens: int = 256,
        top_p: float = 1.0,
        top_k: int | None = None,
        dtype: DTypeName = "auto",
        attn_implementation: str | None = None,
        lora: LoraConfig | None = None,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        freeze_vision: bool = True,
        quantization: Quantization | None = None,
        gradient_checkpointing: bool = False,
        logprob_batch_size: int = 16,
        answer_label: str = "lesion",
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        prefill_once: bool = True,
        reference_dtype: DTypeName | None = None,
    ) -> None:
        super().__init__()
        model_name_or_path = resolve_model_name(model_name_or_path)
        _check_args(max_new_tokens=max_new_tokens, top_p=top_p, top_k=top_k, lora_r=lora_r,
                    lora_dropout=lora_dropout, logprob_batch_size=logprob_batch_size, prompt_template=prompt_template)
        resolve_dtype(dtype)
        if reference_dtype is not None:
            resolve_dtype(reference_dtype)
        self.lora_config = lora_config(lora, r=lora_r, alpha=lora_alpha, dropout=lora_dropout,
                                       target_modules=lora_target_modules, freeze_vision=freeze_vision)
        _check_quantization(quantization, trains_adapter=self.lora_config is not None
                            or adapter_base(model_name_or_path) is not None)
        self.model_name_or_path = model_name_or_path
        self.prompt_template = prompt_template
        self.max_new_tokens = max_new_tokens
        self.top_p = top_p
        self.top_k = top_k
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.freeze_vision = freeze_vision
        self.quantization = quantization
        self.gradient_checkpointing = gradient_checkpointing
        self.logprob_batch_size = logprob_batch_size
        self.answer_label = answer_label
        self.trust_remote_code = trust_remote_code
        self.local_files_only = local_files_only
        self.prefill_once = prefill_once
        self.reference_dtype = reference_dtype
        self.processor = _load_processor_for(model_name_or_path, min_pixels=min_pixels, max_pixels=max_pixels,
                                             trust_remote_code=trust_remote_code,
                                             local_files_only=local_files_only)
        self.model: nn.Module | None = None
        self._reference_model: nn.Module | None = None  # kept out of _modules: not trained, not checkpointed
        self._reference_enabled = False
        self._hub_generation_config: Any = None

    # ------------------------------------------------------------------ set-up
    @property
    def uses_adapter(self) -> bool:
        """True when training a peft adapter (new LoRA or a loaded adapter folder)."""
        return self.lora_config is not None or adapter_base(self.model_name_or_path) is not None

    @property
    def wrap_classes(self) -> tuple[type[nn.Module], ...]:
        """Blocks for FSDP auto-wrapping and activation checkpointing (decoder layers, vision blocks)."""
        return wrap_classes()

    def configure(self, sharding: Sharding | None = None) -> None:
        """Load the weights, then apply quantization, LoRA, frozen vision and checkpointing. Idempotent."""
        super().configure(sharding)
        if self.model is not None:
            return
        base_path = adapter_base(self.model_name_or_path)
        model = load_base_model(base_path or self.model_name_or_path, dtype=self.dtype_name,
                                attn_implementation=self.attn_implementation, quantization=self.quantization,
                                trust_remote_code=self.trust_remote_code, local_files_only=self.local_files_only)
        self._read_token_ids(model)
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(model, with_adapter=self.uses_adapter)
        if base_path is not None:
            model = load_adapter(model, self.model_name_or_path, local_files_only=self.local_files_only)
        elif self.lora_config is not None:
            model = apply_lora(model, self.lora_config)
        elif self.freeze_vision:
            vision_tower(model).requires_grad_(False)
        model.train()
        self.model = model

    def _read_token_ids(self, model: nn.Module) -> None:
        """EOS/pad/suppressed ids from the checkpoint; decoding parameters become ours alone."""
        from transformers import GenerationConfig

        config, tok = model.config, self.processor.tokenizer
        hub = model.generation_config
        eos = hub.eos_token_id if hub.eos_token_id is not None else config.text_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
            eos_ids.append(tok.eos_token_id)
        if not eos_ids:
            raise CheckpointError(f"{self.model_name_or_path}: no eos_token_id in generation_config.json, "
                             "config.json or the tokenizer")
        self.eos_token_ids = eos_ids
        self.answer_eos_id = tok.eos_token_id if tok.eos_token_id is not None else eos_ids[0]
        self.pad_token_id = next(i for i in (hub.pad_token_id, tok.pad_token_id, eos_ids[0]) if i is not None)
        suppress = {getattr(config, f"{name}_token_id", None)
                    for name in ("image", "video", "vision_start", "vision_end")}
        suppress |= {tok.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS}
        self.suppress_token_ids = sorted(i for i in suppress if isinstance(i, int) and i >= 0
                                         and i != tok.unk_token_id)
        self.context_length = int(config.text_config.max_position_embeddings)
        # The hub's sampling defaults (Qwen ships top_k=1, repetition_penalty=1.05) would silently change
        # the sampling distribution; keep them only for export.
        self._hub_generation_config = hub
        model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=self.pad_token_id)

    def enable_reference(self) -> None:
        """Make ``logprobs(reference=True)`` available: adapters off with LoRA, else a frozen copy."""
        self.configure()
        if self._reference_enabled:
            return
        if not self.uses_adapter:
            # A fresh load of the checkpoint rather than a deepcopy: equal at step 0, and still the start
            # point when called after a resumed checkpoint has overwritten the policy's weights.
            ref = load_base_model(self.model_name_or_path, dtype=self.reference_dtype or self.dtype_name,
                                  attn_implementation=self.attn_implementation,
                                  trust_remote_code=self.trust_remote_code, local_files_only=self.local_files_only)
            ref.requires_grad_(False)
            object.__setattr__(self, "_reference_model", ref.to(self.device))  # unregistered on purpose
        self._reference_enabled = True

    @property
    def max_completion_length(self) -> int:
        return self.max_new_tokens

    @property
    def rows_per_forward(self) -> int:
        return self.logprob_batch_size

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, record: Record) -> str:
        """The chat-templated prompt of one record (image placeholder + templated query)."""
        return prompt_text(self.processor, record, self.prompt_template)

    def encode(self, batch: Sequence[Record], extra_tokens: Sequence[int] | int = 0) -> EncodedPrompts:
        """Processor outputs of ``batch``, rejecting prompts whose length + ``extra_tokens`` exceed the context."""
        self.configure()
        return encode_prompts(self.processor, batch, template=self.prompt_template,
                              context_length=self.context_length, device=self.device, extra_tokens=extra_tokens)

    # ------------------------------------------------------------------ generation
    def generation_config(self, *, do_sample: bool, temperature: float = 1.0, num_return_sequences: int = 1):
        """Every decoding parameter set explicitly, so no checkpoint default can leak in."""
        from transformers import GenerationConfig

        self.configure()
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, do_sample=do_sample, num_return_sequences=num_return_sequences,
            eos_token_id=list(self.eos_token_ids), pad_token_id=self.pad_token_id,
            suppress_tokens=list(self.suppress_token_ids), repetition_penalty=1.0, use_cache=True)
        if do_sample:
            kwargs.update(temperature=float(temperature), top_p=float(self.top_p), top_k=int(self.top_k or 0))
        return GenerationConfig(**kwargs)

    def shard(self, mesh: Any) -> None:
        """FSDP2: one unit per decoder layer and vision block, then the rest; ``generate`` runs the root's
        unshard hooks like ``forward`` does."""
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        self.configure()
        for module in list(self.model.modules()):
            if isinstance(module, self.wrap_classes):
                fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        register_fsdp_forward_method(self.model, "generate")

    def _generate(self, prompts: dict[str, Tensor], config: Any) -> Tensor:
        """Completion ids [rows, T] (prompt stripped)."""
        synced = True if self.sharding.synced_generation else None
        with torch.no_grad(), train_mode_without_dropout(self.model):
            if self._shares_prefill(config.num_return_sequences or 1):
                sequences = generate_with_shared_prefill(self.model, prompts, config, synced_gpus=synced)
            else:
                sequences = self.model.generate(**prompts, generation_config=config, synced_gpus=synced)
        return sequences[:, prompts["input_ids"].shape[1]:]

    def _every_rank_generates(self, has_prompts: bool) -> bool:
        """Whether every rank has a prompt to generate from. Sharded ranks must enter ``generate`` together (its
        forwards all-gather the weights), so when one has none, none generates."""
        return distributed.all_ranks(has_prompts) if self.sharding.synced_generation else has_prompts

    def _shares_prefill(self, rows_per_prompt: float, model: nn.Module | None = None) -> bool:
        """Whether to prefill each prompt once for its rows: on by ``prefill_once`` when prompts repeat and the
        model is unsharded (sharded roots gather their parameters only inside the root forward and
        ``generate``); a gradient pass also needs `caches_through_backward`."""
        if not self.prefill_once or rows_per_prompt <= 1 or self.sharding.sharded:
            return False
        return not torch.is_grad_enabled() or caches_through_backward(model if model is not None else self.model)

    def _decode(self, completion_ids: Tensor, mask: Tensor) -> list[str]:
        lengths = mask.sum(1).long().tolist()
        return self.processor.tokenizer.batch_decode(
            [row[:n].tolist() for row, n in zip(completion_ids, lengths)], skip_special_tokens=True)

    def _boxes(self, texts: Sequence[str], geometries: Sequence[ImageGeometry], group: int) -> Tensor:
        boxes = torch.full((len(texts), 4), math.nan, dtype=torch.float32)
        for row, text in enumerate(texts):
            box = parse_box(text)
            if box is not None:
                boxes[row] = torch.tensor(geometries[row // group].to_original(box), dtype=torch.float32)
        return boxes.to(self.device)

    def sample(self, batch: Sequence[Record], num_generations: int, temperature: float) -> Rollout:
        """G sampled answers per prompt at ``temperature`` (set explicitly), without gradients."""
        if num_generations < 1 or temperature <= 0:
            raise ValueError(f"need num_generations >= 1 and temperature > 0, got {num_generations}, "
                             f"{temperature}")
        enc = self.encode(batch, self.max_new_tokens)
        if not self._every_rank_generates(enc.prompts is not None):
            return _empty_rollout(num_generations, {**dict.fromkeys(enc.kept, _NOT_GENERATED), **enc.rejected},
                                  self.device)
        config = self.generation_config(do_sample=True, temperature=temperature,
                                        num_return_sequences=num_generations)
        completion_ids = self._generate(enc.prompts, config)
        mask, has_eos = completion_mask(completion_ids, self.eos_token_ids)
        texts = self._decode(completion_ids, mask)
        state = QwenRolloutState(enc.prompts, completion_ids, float(temperature),
                                 enc.prompts["input_ids"].shape[1])
        return Rollout(
            num_generations=num_generations, texts=texts,
            boxes=self._boxes(texts, enc.geometries, num_generations), mask=mask, logps=None, state=state,
            info={"truncated": (~has_eos).float()},
            kept=enc.kept, rejected=enc.rejected)

    def predict(self, batch: Sequence[Record]) -> tuple[list[str], Tensor]:
        """Greedy answers and boxes in original pixels; rejected records give "" and a NaN box."""
        enc = self.encode(batch, self.max_new_tokens)
        for reason in enc.rejected.values():
            warnings.warn(f"predict: {reason}; answering with no box", stacklevel=2)
        texts = [""] * len(batch)
        boxes = torch.full((len(batch), 4), math.nan, dtype=torch.float32, device=self.device)
        if not self._every_rank_generates(enc.prompts is not None):
            if enc.prompts is not None:
                warnings.warn(f"predict: {_NOT_GENERATED}; answering with no box", stacklevel=2)
        else:
            completion_ids = self._generate(enc.prompts, self.generation_config(do_sample=False))
            mask, _ = completion_mask(completion_ids, self.eos_token_ids)
            kept_texts = self._decode(completion_ids, mask)
            kept_boxes = self._boxes(kept_texts, enc.geometries, 1)
            for j, i in enumerate(enc.kept):
                texts[i], boxes[i] = kept_texts[j], kept_boxes[j]
        return texts, boxes

    # ------------------------------------------------------------------ scoring
    def _score(self, model: nn.Module, prompts: dict[str, Tensor], prompt_index: Sequence[int],
               completion_ids: Tensor, mask: Tensor, temperature: float) -> Tensor:
        """Teacher-forced per-token log-probs [n, T] of ``completion_ids`` after prompts ``prompt_index``.

        With `_shares_prefill` each distinct prompt runs once and its rows continue from its cache
        (`score_with_shared_prefill`). Otherwise the G rows of one prompt still share its image: unsharded
        models run the vision tower once per distinct image and hand the features to every row (identical
        log-probs; ~2.6x less work on the tiny model's forward + backward at G = 8). Sharded models take the
        plain path: under FSDP the vision tower's root parameters are only gathered inside the root forward.
        """
        if self._shares_prefill(len(prompt_index) / max(len(set(prompt_index)), 1), model):
            return score_with_shared_prefill(model, prompts, prompt_index, completion_ids, mask, temperature)
        shared = not self.sharding.sharded and _accepts_encoder_outputs(type(base_model(model)))
        inputs = append_completions(select_prompts(prompts, prompt_index, pixels=not shared), completion_ids, mask)
        if shared:
            inputs["mm_encoder_outputs"] = {"image": shared_image_features(model, prompts, prompt_index)}
        length = completion_ids.shape[1]
        logits = model(**inputs, use_cache=False, logits_to_keep=length + 1).logits[:, :-1]
        return token_logprobs(logits, completion_ids, temperature)

    def logprobs(self, rollout: Rollout, rows: Tensor | None = None, *, reference: bool = False) -> Tensor:
        """Per-token log-probs [len(rows), T] with logits divided by the sampling temperature (as TRL does),
        in chunks of ``logprob_batch_size`` rows. ``reference=True`` scores under the reference, no grad."""
        self.configure()
        state: QwenRolloutState | None = rollout.state
        width = rollout.mask.shape[1]
        rows = torch.arange(rollout.num_rows) if rows is None else torch.as_tensor(rows).reshape(-1).cpu()
        if state is None or rows.numel() == 0:
            return torch.zeros(rows.numel(), width, device=rollout.mask.device)
        if reference and not self._reference_enabled:
            raise RuntimeError("reference log-probs requested but enable_reference() was never called "
                               "(it is only called when beta > 0)")
        out = []
        for chunk in rows.split(self.logprob_batch_size):
            prompt_index = (chunk // rollout.num_generations).tolist()
            ids, mask = state.completion_ids[chunk.to(state.completion_ids.device)], rollout.mask[chunk]
            if reference:
                out.append(self._reference_logprobs(state, prompt_index, ids, mask))
            elif torch.is_grad_enabled():
                out.append(self._score(self.model, state.prompts, prompt_index, ids, mask, state.temperature))
            else:
                with train_mode_without_dropout(self.model):
                    out.append(self._score(self.model, state.prompts, prompt_index, ids, mask,
                                           state.temperature))
        return torch.cat(out)

    def _reference_logprobs(self, state: QwenRolloutState, prompt_index: list[int], ids: Tensor,
                            mask: Tensor) -> Tensor:
        with torch.no_grad():
            if self._reference_model is None:
                with self.model.disable_adapter(), train_mode_without_dropout(self.model):
                    return self._score(self.model, state.prompts, prompt_index, ids, mask, state.temperature)
            ref = self._reference_model
            if next(ref.parameters()).device != self.device:
                ref.to(self.device)
            with train_mode_without_dropout(ref):
                return self._score(ref, state.prompts, prompt_index, ids, mask, state.temperature)

    def sft_loss(self, batch: Sequence[Record]) -> Tensor:
        """Mean cross-entropy over answer tokens: ``format_answer`` of the GT box in model pixels, then EOS.

        Records whose prompt + answer exceed the context are skipped with a warning (never truncated).
        """
        enc = self.encode(batch)
        answers = self._answer_ids(batch, enc)
        extras = [0] * len(batch)
        for i, ids in zip(enc.kept, answers):
            extras[i] = len(ids)
        if any(enc.lengths[j] + extras[i] > self.context_length for j, i in enumerate(enc.kept)):
            enc = self.encode(batch, extras)
            answers = self._answer_ids(batch, enc)
        for reason in enc.rejected.values():
            warnings.warn(f"sft_loss: {reason}; skipped", stacklevel=2)
        if enc.prompts is None:
            return torch.zeros((), device=self.device, requires_grad=True)
        width = max(len(a) for a in answers)
        ids = torch.full((len(answers), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(answers), width)
        for row, answer in enumerate(answers):
            ids[row, :len(answer)] = torch.tensor(answer)
            mask[row, :len(answer)] = 1.0
        ids, mask = ids.to(self.device), mask.to(self.device)
        logps = self._score(self.model, enc.prompts, list(range(len(answers))), ids, mask, 1.0)
        return -(logps * mask).sum() / mask.sum()

    def _answer_ids(self, batch: Sequence[Record], enc: EncodedPrompts) -> list[list[int]]:
        tok = self.processor.tokenizer
        texts = [format_answer(geometry.to_model([float(v) for v in batch[i]["bbox"]]), label=self.answer_label)
                 for i, geometry in zip(enc.kept, enc.geometries)]
        return [tok(text, add_special_tokens=False)["input_ids"] + [self.answer_eos_id] for text in texts]

    # ------------------------------------------------------------------ export
    def export(self, directory: str, *, merge_adapter: bool = False) -> None:
        """Write the processor and the model: the adapter alone with LoRA (loadable by this class or peft),
        or the full model; ``merge_adapter=True`` writes a merged full model instead (not for 4/8-bit)."""
        import copy

        self.configure()
        model = self.model
        if merge_adapter and self.uses_adapter:
            if self.quantization is not None:
                raise ConfigError("merge_adapter=True needs an unquantized model: merge the exported adapter "
                                 "into a bf16 load of the base model instead (see docs/qwen.md)")
            model = copy.deepcopy(model).merge_and_unload()
        target = base_model(model)
        current = target.generation_config
        target.generation_config = self._hub_generation_config
        try:
            model.save_pretrained(directory)
        finally:
            target.generation_config = current
        self.processor.save_pretrained(directory)


@functools.lru_cache(maxsize=None)
def _accepts_encoder_outputs(model_class: type) -> bool:
    """Whether this transformers version's Qwen2.5-VL forward takes precomputed ``mm_encoder_outputs``."""
    return "mm_encoder_outputs" in inspect.signature(model_class.forward).parameters


def _check_args(*, max_new_tokens: int, top_p: float, top_k: int | None, lora_r: int, lora_dropout: float,
                logprob_batch_size: int, prompt_template: str) -> None:
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise ConfigError(f"top_k must be None or >= 0, got {top_k}")
    if lora_r < 0 or not 0 <= lora_dropout < 1:
        raise ConfigError(f"need lora_r >= 0 and 0 <= lora_dropout < 1, got {lora_r}, {lora_dropout}")
    if logprob_batch_size < 1:
        raise ConfigError(f"logprob_batch_size must be >= 1, got {logprob_batch_size}")
    if "{query}" not in prompt_template:
        raise ConfigError(f"prompt_template must contain a '{{query}}' placeholder, got {prompt_template!r}")


def _check_quantization(quantization: str | None, *, trains_adapter: bool) -> None:
    check_quantization(quantization)
    if quantization is not None and not trains_adapter:
        raise ConfigError("quantized weights cannot be fine-tuned directly: set lora_r > 0 or lora (QLoRA)")


def _load_processor_for(path: str, **kwargs: Any) -> Any:
    """The processor of ``path``, or of its base model when ``path`` is an adapter folder without one."""
    base = adapter_base(path)
    try:
        return load_processor(path, **kwargs)
    except (OSError, ValueError):
        if base is None:
            raise
        return load_processor(base, **kwargs)


_NOT_GENERATED = ("not generated: another rank had no prompt within the context, and sharded ranks generate "
                  "together")


def _empty_rollout(num_generations: int, rejected: dict[int, str], device: torch.device) -> Rollout:
    return Rollout(num_generations=num_generations, texts=[], boxes=torch.zeros(0, 4, device=device),
                   mask=torch.zeros(0, 0, device=device), logps=None, state=None,
                   info={"truncated": torch.zeros(0, device=device)},
                   kept=[], rejected=dict(rejected))
