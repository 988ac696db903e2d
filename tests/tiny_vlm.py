"""Tiny vision-language models (random weights, built from configs) with a word-level tokenizer and a small chat
template, saved in the save_pretrained layout so they load through AutoProcessor / AutoModelForImageTextToText.

Families:
  qwen2_vl  Qwen2-VL: videos and images. Frames of 32x32 pixels give 4 merged vision tokens per image (patch 4,
            merge 2); a video of 8 frames gives 16 (temporal patch 2). transformers 5 builds a Qwen2VLProcessor only
            when torchvision is installed (its video processor needs it): `has_torchvision()` says.
  llava     LLaVA (CLIP vision tower, Llama text model): images only (several per prompt); 16 tokens per 32x32
            image (patch 8). Works without torchvision (PIL image processor).

`always="B"` makes a model whose greedy answer is that word followed by the end-of-turn token, whatever the
input: every embedding row is one vector d1 (that of `always`: d2), attention and MLP outputs are zero so each
position's hidden state is its own token's embedding, and the LM head maps d1 to `always` and d2 to the end.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

FAMILIES = ("qwen2_vl", "llava")
UNK = "[UNK]"  # in the word vocabulary: a reloaded WordLevel model looks for this name
PAD, EOS = "<|endoftext|>", "<|im_end|>"
SPECIAL_TOKENS = {
    "qwen2_vl": (PAD, "<|im_start|>", EOS, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    "llava": (PAD, "<|im_start|>", EOS, "<image>"),
}
WORDS = ("A B C D E a b c d e the a an is are of to in on from with and or not no yes which what where how does "
         "do car person camera moving move moves left right up down forward backward toward away clockwise "
         "counterclockwise direction rotating turning answer final Answer option options letter choices given "
         "directly step by think video frames frame question Question Options user assistant system : . , ? ! ' \" "
         "( ) - 1 2 3 4 5 6 7 8 9 0").split()
SIZE = 32  # frame side in pixels the processors resize to
HIDDEN = 32

# Jinja chat templates in the role/content layout of transformers' multimodal messages.
_ITEMS = {
    "qwen2_vl": ("{%- if item['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
                 "{%- elif item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"),
    "llava": "{%- if item['type'] == 'image' -%}{{ '<image>' }}",
}


def chat_template(family: str) -> str:
    return ("{%- for message in messages -%}"
            "{{ '<|im_start|>' + message['role'] + '\\n' }}"
            "{%- if message['content'] is string -%}{{ message['content'] }}"
            "{%- else -%}{%- for item in message['content'] -%}"
            + _ITEMS[family] +
            "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
            "{%- endif -%}{%- endfor -%}{%- endif -%}"
            "{{ '<|im_end|>\\n' }}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def build_tokenizer(family: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([UNK, *WORDS]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=4096, padding_side="left")
    tokenizer.add_special_tokens({"unk_token": UNK, "pad_token": PAD, "eos_token": EOS,
                                  "additional_special_tokens": [t for t in SPECIAL_TOKENS[family]
                                                                if t not in (PAD, EOS)]})
    return tokenizer


def build_processor(family: str):
    tokenizer = build_tokenizer(family)
    if family == "qwen2_vl":
        if not has_torchvision():
            raise RuntimeError("a Qwen2-VL processor needs torchvision (transformers' video processors use it)")
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        sizes = {"min_pixels": SIZE * SIZE, "max_pixels": SIZE * SIZE, "patch_size": 4, "merge_size": 2,
                 "temporal_patch_size": 2}
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**sizes),
                                video_processor=Qwen2VLVideoProcessor(**sizes), tokenizer=tokenizer,
                                chat_template=chat_template(family))
    if family == "llava":
        from transformers import CLIPImageProcessor, LlavaProcessor

        image_processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
        return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=chat_template(family))
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def _config(family: str, tok):
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS[family]}
    text = {"vocab_size": len(tok), "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "bos_token_id": ids[PAD], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                   "mrope_section": [2, 3, 3]}  # sums to head_dim / 2 = 8
        return Qwen2VLConfig(
            text_config=text,
            vision_config={"depth": 1, "embed_dim": 16, "hidden_size": HIDDEN, "num_heads": 2, "mlp_ratio": 2,
                           "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2},
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": SIZE, "patch_size": 8, "hidden_size": 16,
                       "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "projection_dim": 16},
        text_config={"model_type": "llama", **text}, image_token_index=ids["<image>"],
        image_seq_length=(SIZE // 8) ** 2, vision_feature_layer=-1, vision_feature_select_strategy="default")


def build_tiny_vlm(directory: str | Path, *, family: str = "qwen2_vl", always: str | None = None,
                   seed: int = 0) -> Path:
    """Save a tiny model of `family` and its processor to `directory` (see the module docstring)."""
    import torch
    from transformers import AutoModelForImageTextToText

    directory = Path(directory)
    processor = build_processor(family)
    tok = processor.tokenizer
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(_config(family, tok)).eval()
    if always is not None:
        with torch.no_grad():
            d1, d2 = torch.zeros(HIDDEN), torch.zeros(HIDDEN)
            d1[: HIDDEN // 2], d2[HIDDEN // 2:] = 1.0, 1.0
            embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
            embed[:] = d1
            embed[tok.convert_tokens_to_ids(always)] = d2
            for layer in model.model.language_model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            head.zero_()
            head[tok.convert_tokens_to_ids(always)] = d1
            head[tok.convert_tokens_to_ids(EOS)] = d2
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(EOS)
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids(PAD)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
