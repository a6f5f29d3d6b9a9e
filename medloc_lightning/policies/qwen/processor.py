"""The Qwen2.5-VL processor without its video half, so it loads without torchvision.

transformers 5.x derives a processor's sub-processors from its ``__init__`` signature, and the stock
``Qwen2_5_VLProcessor`` lists a video processor that needs torchvision. Dropping that argument keeps the
image processor and tokenizer, which is all grounding needs. It loads real Qwen2.5-VL folders too.
"""
from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

from medloc_lightning.errors import ConfigError

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
"""Tokens a policy must never sample: an extra image placeholder breaks the log-prob pass."""


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` with an image processor and a tokenizer only (no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.video_token = getattr(tokenizer, "video_token", None) or VIDEO_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_processor(path: str, *, min_pixels: int | None = None, max_pixels: int | None = None,
                   trust_remote_code: bool = False, local_files_only: bool = False
                   ) -> ImageOnlyQwen2_5_VLProcessor:
    """Load the processor of a Qwen2.5-VL folder or hub name, with the image pixel bounds overridden."""
    processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(
        path, trust_remote_code=trust_remote_code, local_files_only=local_files_only)
    set_pixel_bounds(processor, min_pixels=min_pixels, max_pixels=max_pixels)
    return processor


def set_pixel_bounds(processor: Any, *, min_pixels: int | None, max_pixels: int | None) -> None:
    """Override the image processor's resize bounds (None keeps the folder's value)."""
    current_min, current_max = pixel_bounds(processor)
    low = current_min if min_pixels is None else int(min_pixels)
    high = current_max if max_pixels is None else int(max_pixels)
    if not 0 < low <= high:
        raise ConfigError(f"need 0 < min_pixels <= max_pixels, got min_pixels={low}, max_pixels={high}")
    improc = processor.image_processor
    size = {"shortest_edge": low, "longest_edge": high}
    improc.size = size if isinstance(improc.size, dict) else type(improc.size)(**size)


def pixel_bounds(processor: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) the processor resizes images to (the v5 ``size`` keys)."""
    size = processor.image_processor.size
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    return int(get("shortest_edge")), int(get("longest_edge"))
