"""Every supported family, built tiny from a config, saved, reloaded through from_pretrained and scored:
the engine's CE equals the model's own labels loss, batching is exact, templates behave as released."""
import pytest
import torch

from fixtures.engine import random_image, tiny_dir, tiny_vlm  # noqa: F401 (fixtures)
from promptecho.testing.tiny_vlms import FAMILIES

END_TOKENS = {"llava": None, "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>", "smolvlm": "<end_of_utterance>",
              "idefics3": "<end_of_utterance>", "gemma3": "<end_of_turn>", "paligemma": "<eos>",
              "internvl": "<|im_end|>"}
PROMPT = "a red circle left of a blue square, café 東京"


def _single_inputs(vlm, image, prompt, **kw):
    row = vlm._prepared_row(image, prompt, **kw)
    enc = vlm._process([row])
    enc.pop("labels", None)
    return row, enc


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loss_equals_model_labels_loss(tiny_vlm, family):
    vlm = tiny_vlm(family)
    img = random_image(11, 40, 56)
    [res] = vlm.score([img], PROMPT)
    row, enc = _single_inputs(vlm, img, PROMPT)
    ids = enc["input_ids"]
    L, n = ids.shape[1], res.n_tokens
    start = L - (len(row.ids) - row.i0)  # the answer tokens sit just before the (optional) end token
    answer = ids[0, start:start + n]
    # independent check that exactly the prompt was scored (a template space may be merged into token 1)
    assert vlm.tokenizer.decode(answer).strip() == PROMPT
    labels = torch.full_like(ids, -100)
    labels[0, start:start + n] = answer
    with torch.no_grad():
        out = vlm.model(**enc, labels=labels)
    assert res.loss == pytest.approx(out.loss.item(), abs=1e-5)
    logp = out.logits[0].float().log_softmax(-1)
    manual = [-logp[start + j - 1, answer[j]].item() for j in range(n)]
    assert res.token_losses == pytest.approx(manual, abs=1e-5)
    # end-of-turn token: reported separately, never in the reward by default
    assert row.text.end_token == END_TOKENS[family]
    if END_TOKENS[family] is None:
        assert res.end_token_loss is None
    else:
        assert ids[0, start + n].item() == vlm.tokenizer.convert_tokens_to_ids(END_TOKENS[family])
        assert res.end_token_loss == pytest.approx(-logp[start + n - 1, ids[0, start + n]].item(), abs=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("llava", "gemma3", "paligemma")])
@pytest.mark.parametrize("side", ["left", "right"])
def test_family_batch_of_mixed_sizes_equals_one_at_a_time(tiny_vlm, family, side):
    vlm = tiny_vlm(family)  # llava/gemma3/paligemma are covered in test_scoring.py
    images = [random_image(12, 20, 30), random_image(13, 150, 90), random_image(14, 64, 64)]
    prompts = ["a cat", "two red birds flying over a stone bridge at sunset, watercolor", "hi there"]
    old = vlm.padding_side
    vlm.padding_side = side
    try:
        batched = vlm.score(images, prompts, batch_size=3)
        single = [vlm.score([im], p, batch_size=1)[0] for im, p in zip(images, prompts)]
    finally:
        vlm.padding_side = old
    for b, s in zip(batched, single):
        assert b.token_losses == pytest.approx(s.token_losses, abs=1e-5)
        assert b.end_token_loss == pytest.approx(s.end_token_loss, abs=1e-5)


def test_gemma3_sequence_has_a_single_bos(tiny_vlm):
    vlm = tiny_vlm("gemma3")
    row, enc = _single_inputs(vlm, random_image(15), "a dog")
    ids = enc["input_ids"][0].tolist()
    assert row.text.text.startswith("<bos>") and not row.text.add_special_tokens
    assert ids[0] == vlm.tokenizer.bos_token_id and ids.count(vlm.tokenizer.bos_token_id) == 1


def test_qwen25_default_system_prompt_is_explicit_and_configurable(tiny_vlm):
    vlm = tiny_vlm("qwen2_5_vl")
    img = random_image(16)
    [default] = vlm.score([img], "a cat")
    [same] = vlm.score([img], "a cat", system_prompt="You are a helpful assistant.")
    [other] = vlm.score([img], "a cat", system_prompt="You describe images.")
    assert default.token_losses == pytest.approx(same.token_losses, abs=1e-6)  # the stock template's default
    assert other.token_losses != pytest.approx(default.token_losses, abs=1e-6)
    assert same.system_prompt == "You are a helpful assistant." and default.system_prompt is None
    q3 = tiny_vlm("qwen3_vl")  # Qwen3-VL injects no system turn
    assert "system" not in q3._prepared_row(img, "a cat").text.text
    assert "system\nBe brief.<|im_end|>" in q3._prepared_row(img, "a cat", system_prompt="Be brief.").text.text


@pytest.mark.parametrize("family", ["smolvlm", "idefics3", "llava"])
def test_template_space_merges_into_first_answer_token(tiny_vlm, family):
    vlm = tiny_vlm(family)
    [res] = vlm.score([random_image(17)], "a red cat")
    assert res.tokens[0] == " a" and res.spans[0] == (0, 1)
    assert [w.text for w in res.words] == ["a", "red", "cat"]


def test_paligemma_uses_prefix_suffix_path(tiny_vlm):
    vlm = tiny_vlm("paligemma")
    row, enc = _single_inputs(vlm, random_image(18), "a dog")
    assert vlm.builder.path == "prefix_suffix"
    tt = enc["token_type_ids"][0].tolist()
    n_suffix = sum(tt)
    assert n_suffix == len(row.ids)  # suffix = prompt tokens + EOS
    assert enc["input_ids"][0, -1].item() == vlm.tokenizer.eos_token_id


def test_template_that_refuses_a_system_turn_gives_a_clear_error(tiny_vlm):
    from promptecho.templates import TemplateBuilder, TemplateError

    vlm = tiny_vlm("llava")

    class NoSystem:  # a processor whose template raises on system turns, like several released ones
        tokenizer = vlm.tokenizer
        image_token = "<image>"
        chat_template = "x"

        def apply_chat_template(self, messages, **kw):
            if messages[0]["role"] == "system":
                raise ValueError("System role not supported")
            return vlm.processor.apply_chat_template(messages, **kw)

    builder = TemplateBuilder(NoSystem())
    assert builder.score_row("a cat", "Describe.", None).text.endswith("ASSISTANT: a cat")
    with pytest.raises(TemplateError, match="with this system prompt: System role not supported"):
        builder.score_row("a cat", "Describe.", "Be brief.")


def test_template_rendering_assistant_text_from_a_string_only(tiny_vlm):
    from promptecho.templates import TemplateBuilder

    vlm = tiny_vlm("qwen3_vl")

    class StringOnly:  # prints message content verbatim: a list would show up as its Python repr
        tokenizer = vlm.tokenizer
        image_token = "<|image_pad|>"
        chat_template = "x"

        def apply_chat_template(self, messages, **kw):
            out = ""
            for m in messages:
                body = m["content"] if m["role"] == "assistant" else "<|image_pad|>" + m["content"][-1]["text"]
                out += f"<|im_start|>{m['role']}\n{body}<|im_end|>\n"
            return out

    row = TemplateBuilder(StringOnly()).score_row("a cat", "Describe.", None)
    assert row.text.endswith("<|im_start|>assistant\na cat<|im_end|>") and row.end_token == "<|im_end|>"
