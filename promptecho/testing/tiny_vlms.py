"""Tiny random-weight vision-language models built offline from configs (about 1 MB each).

Each builder trains a small byte-level BPE tokenizer on a synthetic corpus, wires it into the family's
real processor class with a chat template shaped like the released checkpoint's, and saves model and
processor with ``save_pretrained``, so they reload through ``AutoProcessor`` /
``AutoModelForImageTextToText.from_pretrained`` exactly as a downloaded model would.

Qwen2.5-VL, Qwen3-VL, SmolVLM and InternVL processors need torchvision importable (transformers 5.x);
the others do not. Nothing here downloads anything.
"""
from __future__ import annotations

import json
import os
import random
from typing import Callable, Dict, List, Sequence

FAMILIES = ("llava", "qwen2_5_vl", "qwen3_vl", "smolvlm", "idefics3", "gemma3", "paligemma", "internvl")
NEEDS_TORCHVISION = frozenset({"qwen2_5_vl", "qwen3_vl", "smolvlm", "internvl"})

# Qwen2 pre-tokenisation pattern (splits letters, digits, punctuation and whitespace runs like Qwen does).
_QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

_LEXICON = """a an the of and in on with to from at by is are this that image picture photo figure show shows
describe detail detailed does please answer yes no cat dog red blue green yellow black white orange purple
sky sea mountain tree forest city street car house girl boy man woman child old young small big large tiny
sitting standing running flying under over near behind left right top bottom sunset night day circle square
triangle star painting art style realistic lighting portrait landscape wearing hat holding cup book table
chair window room garden flower field river lake beach cloud snow astronaut horse riding moon robot neon two
three four many people wooden stone glass metal bird boat bridge castle road sign text hello world""".split()


def _corpus(n_lines: int = 2500, seed: int = 0) -> List[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        s = " ".join(rng.choice(_LEXICON) for _ in range(rng.randint(3, 18)))
        if rng.random() < 0.5:
            s = s.capitalize()
        if rng.random() < 0.5:
            s += rng.choice(".,!?:;")
        if rng.random() < 0.2:
            s += f" {rng.randint(0, 2025)}"
        lines.append(s)
    lines += ["You are a helpful assistant.", "Describe this image in detail.",
              'Does this figure show "a cat"? Please answer yes or no.', "Yes No yes no user assistant system",
              "USER: ASSISTANT: User: Assistant: model"]
    return lines


def _train_tokenizer(specials: Sequence[str], qwen_split: bool, vocab_size: int = 1024):
    """A byte-level BPE `tokenizers.Tokenizer` trained on the synthetic corpus (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    if qwen_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _fast_tokenizer(specials, bos, eos, pad, prepend_bos=False, extra=None, qwen_split=False, max_len=8192):
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    obj = _train_tokenizer(specials, qwen_split=qwen_split)
    if prepend_bos:  # Llama / Gemma tokenizers put BOS in front of every encoded text
        obj.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, obj.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=obj, bos_token=bos, eos_token=eos, pad_token=pad,
                                  unk_token=pad, extra_special_tokens=extra or {}, model_max_length=max_len)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    return tok


def _padded_vocab(tok) -> int:
    return ((len(tok) + 63) // 64) * 64


_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)

# ---------------------------------------------------------------- chat templates (shaped like the releases)
# llava-hf/llava-1.5: "USER: <image>\n{q} ASSISTANT: {answer} " -- no end-of-turn token after the answer.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

# Qwen2-VL / Qwen2.5-VL-Instruct: injects "You are a helpful assistant." when no system turn is given.
QWEN25_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Qwen3-VL-Instruct (no tools): no default system prompt.
QWEN3VL_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}{%- for c in messages[0].content %}"
    "{%- if 'text' in c %}{{- c.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

# SmolVLM / Idefics3: generation prompt is "Assistant:" but a rendered assistant turn is "Assistant: " + text.
SMOL_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

# gemma-3-it: starts with BOS itself (the tokenizer would add a second one), trims content, role "model".
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")


# ---------------------------------------------------------------- builders: each returns (model, processor)
def _llava():
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _fast_tokenizer(["<unk>", "<s>", "</s>", "<image>", "<pad>"], "<s>", "</s>", "<pad>",
                          prepend_bos=True, extra={"image_token": "<image>"})
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
                           projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=_padded_vocab(tok), **_TEXT, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=16,
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    return LlavaForConditionalGeneration(cfg), proc


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_tokenizer():
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    obj = _train_tokenizer(_QWEN_SPECIALS, qwen_split=True)
    spec = json.loads(obj.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Qwen2Tokenizer(vocab=spec["vocab"], merges=merges, unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=32768)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in _QWEN_SPECIALS], special_tokens=True)
    return tok


def _qwen_ids(tok) -> Dict[str, int]:
    return dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))


def _qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = _qwen_tokenizer()
    text = dict(_TEXT, vocab_size=_padded_vocab(tok), bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
    text.pop("head_dim")
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=64,
                           fullatt_block_indexes=[1], in_channels=3),
        tie_word_embeddings=False, **_qwen_ids(tok))
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
                                  patch_size=14, temporal_patch_size=2, merge_size=2)
    proc = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                               chat_template=QWEN25_TEMPLATE)
    return Qwen2_5_VLForConditionalGeneration(cfg), proc


def _qwen3_vl():
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = _qwen_tokenizer()
    cfg = Qwen3VLConfig(
        text_config=dict(_TEXT, vocab_size=_padded_vocab(tok), bos_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           num_position_embeddings=256, deepstack_visual_indexes=[0]),
        tie_word_embeddings=False, **_qwen_ids(tok))
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128}, patch_size=16,
                                  temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    vp = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)
    proc = Qwen3VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=QWEN3VL_TEMPLATE)
    return Qwen3VLForConditionalGeneration(cfg), proc


_SMOL_SPECIALS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>",
                   "<global-img>", "<image>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])


def _idefics_like(kind: str):
    tok = _fast_tokenizer(_SMOL_SPECIALS, "<|im_start|>", "<end_of_utterance>", "<|endoftext|>")
    text = dict(_TEXT, model_type="llama", vocab_size=_padded_vocab(tok), max_position_embeddings=8192,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=64, patch_size=16)
    scale = 2
    seq_len = (64 // 16) ** 2 // scale ** 2
    if kind == "smolvlm":
        from transformers import SmolVLMConfig as Config, SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMProcessor as Processor
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as ImageProc
        from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
        extra = dict(video_processor=SmolVLMVideoProcessor(size={"longest_edge": 64},
                                                           max_image_size={"longest_edge": 64}))
    else:
        from transformers import Idefics3Config as Config, Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3Processor as Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as ImageProc
        extra = {}
    cfg = Config(text_config=text, vision_config=vision, scale_factor=scale, tie_word_embeddings=False,
                 image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    ip = ImageProc(size={"longest_edge": 2 * 64}, max_image_size={"longest_edge": 64}, do_image_splitting=True)
    proc = Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq_len, chat_template=SMOL_TEMPLATE, **extra)
    return Model(cfg), proc


def _gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                "<end_of_image>", "<image_soft_token>"]
    tok = _fast_tokenizer(specials, "<bos>", "<eos>", "<pad>", prepend_bos=True,
                          extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                 "image_token": "<image_soft_token>"})
    cfg = Gemma3Config(
        text_config=dict(_TEXT, vocab_size=_padded_vocab(tok), query_pre_attn_scalar=16, sliding_window=64,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                         eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8),
        mm_tokens_per_image=16, boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
    ip = Gemma3ImageProcessorPil(size={"height": 64, "width": 64}, do_pan_and_scan=False,
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA3_TEMPLATE, image_seq_length=16)
    return Gemma3ForConditionalGeneration(cfg), proc


def _paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tok = _fast_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], "<bos>", "<eos>", "<pad>",
                          extra={"image_token": "<image>"})
    text = dict(_TEXT, model_type="gemma", vocab_size=_padded_vocab(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = PaliGemmaConfig(
        text_config=text,
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
                           projection_dim=64),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=64, hidden_size=64)
    ip = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    return PaliGemmaForConditionalGeneration(cfg), PaliGemmaProcessor(image_processor=ip, tokenizer=tok)


INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _internvl():
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = _fast_tokenizer(specials, "<|im_start|>", "<|im_end|>", "<|endoftext|>",
                          extra={"start_image_token": "<img>", "end_image_token": "</img>",
                                 "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=[64, 64], patch_size=[16, 16]),
        text_config=dict(_TEXT, model_type="qwen2", vocab_size=_padded_vocab(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4, downsample_ratio=0.5)
    ip = GotOcr2ImageProcessorPil(size={"height": 64, "width": 64}, crop_to_patches=True, min_patches=1,
                                  max_patches=4)
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, image_seq_length=4,
                             video_processor=InternVLVideoProcessor(size={"height": 64, "width": 64}),
                             chat_template=INTERNVL_TEMPLATE)
    return InternVLForConditionalGeneration(cfg), proc


_BUILDERS: Dict[str, Callable] = {
    "internvl": _internvl,
    "llava": _llava, "qwen2_5_vl": _qwen2_5_vl, "qwen3_vl": _qwen3_vl, "gemma3": _gemma3, "paligemma": _paligemma,
    "smolvlm": lambda: _idefics_like("smolvlm"), "idefics3": lambda: _idefics_like("idefics3"),
}


def build_tiny_vlm(family: str, out_dir: str, seed: int = 0) -> str:
    """Build a tiny random model of `family`, save model + processor to `out_dir` and return `out_dir`."""
    import torch

    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {', '.join(FAMILIES)}")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    model, proc = _BUILDERS[family]()
    model.eval().save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":  # python -m promptecho.testing.tiny_vlms FAMILY OUT_DIR
    import sys

    print(build_tiny_vlm(sys.argv[1], sys.argv[2]))
