"""The tiny offline Qwen2.5-VL builder: deterministic files, stock-class reload, tokenizer and processor."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from medloc_lightning.parsing import DEFAULT_PROMPT_TEMPLATE, build_prompt, format_answer
from medloc_lightning.policies.qwen.tiny import QWEN_SPECIAL_TOKENS, build_tiny_qwen2_5_vl, main, tiny_qwen_path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny") / "a")


def test_same_seed_same_files_other_seed_other_weights(built: Path, tmp_path: Path) -> None:
    again = build_tiny_qwen2_5_vl(tmp_path / "b")
    assert _files(built) == _files(again)
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(_files(built))
    other = build_tiny_qwen2_5_vl(tmp_path / "c", seed=1)
    assert _files(other)["model.safetensors"] != _files(built)["model.safetensors"]
    assert _files(other)["tokenizer.json"] == _files(built)["tokenizer.json"]


def test_reloads_offline_with_stock_model_class_and_our_processor(built: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from medloc_lightning.policies.qwen.processor import ImageOnlyQwen2_5_VLProcessor

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(built)
    processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(built)
    config = model.config
    assert config.text_config.hidden_size == 64 and config.vision_config.hidden_size == 64
    assert config.text_config.max_position_embeddings == 2048
    assert config.text_config.vocab_size == len(processor.tokenizer)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(QWEN_SPECIAL_TOKENS)
    assert (config.image_token_id, config.video_token_id) == (ids["<|image_pad|>"], ids["<|video_pad|>"])
    assert (config.vision_start_token_id, config.vision_end_token_id) == (ids["<|vision_start|>"],
                                                                          ids["<|vision_end|>"])
    assert set(model.generation_config.eos_token_id) == {ids["<|im_end|>"], ids["<|endoftext|>"]}
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"
    for token in QWEN_SPECIAL_TOKENS:  # every special token is one token, never split
        assert tok(token, add_special_tokens=False)["input_ids"] == [ids[token]]

    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": build_prompt("lesion", DEFAULT_PROMPT_TEMPLATE)}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    inputs = processor(images=[Image.new("RGB", (224, 224))], text=[text], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert (inputs["input_ids"] == ids["<|image_pad|>"]).sum() == 64
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tok)) and torch.isfinite(logits).all()


def test_tokenizer_is_compact_on_prompts_and_answers(built: Path) -> None:
    from medloc_lightning.policies.qwen.processor import ImageOnlyQwen2_5_VLProcessor

    tok = ImageOnlyQwen2_5_VLProcessor.from_pretrained(built).tokenizer
    prompt = build_prompt("thyroid nodule", DEFAULT_PROMPT_TEMPLATE)
    answer = format_answer((12, 34, 156, 278), think="The nodule is near the center.")
    assert len(tok(prompt)["input_ids"]) < len(prompt) / 3
    assert len(tok(answer)["input_ids"]) < len(answer) / 2
    assert tok.decode(tok(answer)["input_ids"]) == answer
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]  # digits one by one, as Qwen splits them


def test_invalid_dims_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        build_tiny_qwen2_5_vl(tmp_path, hidden=32)
    with pytest.raises(ValueError, match="vision_hidden"):
        build_tiny_qwen2_5_vl(tmp_path, vision_hidden=96)
    with pytest.raises(ValueError, match="min_pixels"):
        build_tiny_qwen2_5_vl(tmp_path, min_pixels=10_000, max_pixels=5_000)


def test_tiny_qwen_path_builds_once_per_cache(tmp_path: Path) -> None:
    first = tiny_qwen_path(tmp_path, max_position_embeddings=512)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_qwen_path(tmp_path, max_position_embeddings=512) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    other = tiny_qwen_path(tmp_path, max_position_embeddings=256)
    assert other != first and other.parent == first.parent
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left behind


def test_main_writes_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    main([str(out), "--seed", "3", "--max-position-embeddings", "256"])
    assert capsys.readouterr().out.strip() == str(out)
    assert '"max_position_embeddings": 256' in (out / "config.json").read_text()
    assert (out / "model.safetensors").is_file()
