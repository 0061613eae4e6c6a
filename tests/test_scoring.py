"""PromptEcho scoring: pure math functions, and exactness of the engine against the model's own loss."""
import math

import pytest
import torch

from fixtures.engine import random_image, tiny_dir, tiny_vlm  # noqa: F401 (fixtures)
from promptecho import DEFAULT_QUERY
from promptecho.scoring import (answer_token_range, display_pieces, reduce_losses, rerank_order, token_losses, token_spans,
                                window_index, word_scores, yes_no_tensor)
from promptecho.vlm import ScoreInputError

UNICODE_PROMPT = "café 東京 🚀 naïve  crème-brûlée, Ünïcödé ✓"


# ---------------------------------------------------------------- pure functions
def test_token_losses_equal_full_log_softmax_in_fp32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g).to(torch.bfloat16)
    targets = torch.tensor([0, 3, 49, 7, 7])
    got = token_losses(logits, targets)
    assert got.dtype == torch.float32
    ref = [-(logits[i].double().log_softmax(-1)[t]).item() for i, t in enumerate(targets.tolist())]
    assert got.tolist() == pytest.approx(ref, abs=1e-5)


def test_yes_no_probs_sum_variants():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    p_yes, p_no = yes_no_tensor(logits, [0, 2], [3]).tolist()
    assert p_yes == pytest.approx(0.4) and p_no == pytest.approx(0.4)


def test_answer_range_and_spans_with_merged_leading_space():
    # "ASSISTANT: a red" -> the answer token " a" starts in the template's space
    text = "ASSISTANT: a red<end>"
    offsets = [(0, 9), (9, 10), (10, 12), (12, 16), (16, 21)]
    i0, i1 = answer_token_range(offsets, 11, 16)
    assert (i0, i1) == (2, 4)
    spans = token_spans(offsets[i0:i1], 11, 16)
    assert spans == [(0, 1), (1, 5)]
    assert "".join(text[11 + s:11 + e] for s, e in spans) == "a red"


def test_spans_fill_gaps_and_share_split_characters():
    # trimmed offsets leave the space unclaimed; a 2-byte character split over two tokens
    offsets = [(0, 1), (2, 3), (2, 3), (3, 5)]
    spans = token_spans(offsets, 0, 6)
    assert spans == [(0, 1), (1, 3), (2, 3), (3, 6)]


def test_display_pieces_do_not_repeat_split_characters():
    prompt = "a 東"
    spans = [(0, 1), (1, 3), (2, 3), (2, 3)]  # " 東" split into three byte tokens
    assert display_pieces(prompt, spans) == ["a", " 東", "", ""]
    assert "".join(display_pieces(prompt, spans)) == prompt


def test_word_scores_count_a_token_for_every_word_it_overlaps():
    prompt = "ab cd"
    spans = [(0, 1), (1, 4), (4, 5)]  # the middle token overlaps both words
    words = word_scores(prompt, spans, [1.0, 3.0, 5.0])
    assert [(w.text, w.start, w.end, w.n_tokens) for w in words] == [("ab", 0, 2, 2), ("cd", 3, 5, 2)]
    assert [w.loss for w in words] == [2.0, 4.0]


def test_word_scores_match_the_all_pairs_definition_on_random_spans():
    """The per-token sweep equals the definition (every token overlapping a word counts), spans in any order."""
    import random
    import re

    rng = random.Random(0)
    for _ in range(500):
        prompt = " ".join("".join(rng.choice("ab\u00e9\u4e2d") for _ in range(rng.randint(1, 5)))
                          for _ in range(rng.randint(1, 8)))
        spans = []
        for _ in range(rng.randint(1, 10)):
            a = rng.randint(0, len(prompt))
            spans.append((a, min(len(prompt), a + rng.randint(0, 4))))
        losses = [rng.random() for _ in spans]
        expected = []
        for m in re.finditer(r"\S+", prompt):
            hit = [l for (a, b), l in zip(spans, losses) if a < m.end() and b > m.start()]
            if hit:
                expected.append((m.group(), m.start(), m.end(), sum(hit) / len(hit), len(hit)))
        got = [(w.text, w.start, w.end, w.loss, w.n_tokens) for w in word_scores(prompt, spans, losses)]
        assert got == expected


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_token_strings_are_each_token_decoded_alone(tiny_vlm, family):
    """score()'s token strings come from a per-id cache: cold and warm it equals decoding each id on its own."""
    vlm = tiny_vlm(family)
    vlm._token_text.clear()
    ids = vlm.tokenizer(UNICODE_PROMPT + " " + UNICODE_PROMPT, add_special_tokens=False).input_ids  # repeats
    alone = [vlm.tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False) for t in ids]
    assert vlm._token_strings(ids) == alone  # cold cache
    assert vlm._token_strings(ids[::-1]) == alone[::-1]  # warm cache
    vlm._token_text.clear()
    cold = vlm.score([random_image(2)], UNICODE_PROMPT)[0].tokens
    warm = vlm.score([random_image(2)], UNICODE_PROMPT)[0].tokens
    assert cold == warm and len(cold) > 5


def test_reduce_and_rerank_order():
    assert reduce_losses([1.0, 2.0, 6.0], "mean") == 3.0
    assert reduce_losses([1.0, 2.0, 6.0], "sum") == 9.0
    with pytest.raises(ValueError, match="reduction"):
        reduce_losses([1.0], "max")
    assert rerank_order([0.5, 2.0, 0.5, 2.0, float("nan")]) == [1, 3, 0, 2, 4]


def test_window_index_pads_rows_by_repeating():
    idx = window_index([[3, 4, 5], [7]])
    assert idx.tolist() == [[3, 4, 5], [7, 7, 7]]


# ---------------------------------------------------------------- engine vs the model's own numbers (LLaVA)
def _llava_teacher_forced(vlm, image, prompt):
    """The llava-1.5 sequence written by hand: 'USER: <image>\\n{q} ASSISTANT: {prompt}'."""
    text = f"USER: <image>\n{DEFAULT_QUERY} ASSISTANT: {prompt}"
    return vlm.processor(text=[text], images=[[image]], return_tensors="pt")


def test_mean_token_loss_equals_model_labels_loss(tiny_vlm):
    vlm = tiny_vlm("llava")
    img, prompt = random_image(1), "a red cat sitting on a wooden table"
    [res] = vlm.score([img], prompt)
    n = res.n_tokens
    enc = _llava_teacher_forced(vlm, img, prompt)
    ids = enc["input_ids"]
    assert vlm.tokenizer.decode(ids[0, -n:]) == " " + prompt  # the engine scored exactly the prompt tokens
    labels = torch.full_like(ids, -100)
    labels[:, -n:] = ids[:, -n:]
    with torch.no_grad():
        out = vlm.model(**enc, labels=labels)
    assert res.loss == pytest.approx(out.loss.item(), abs=1e-5)
    assert res.reward == -res.loss
    # per-token losses against a manual full-vocabulary log-softmax
    logp = out.logits[0].float().log_softmax(-1)
    L = ids.shape[1]
    manual = [-logp[L - n - 1 + j, ids[0, L - n + j]].item() for j in range(n)]
    assert res.token_losses == pytest.approx(manual, abs=1e-5)
    assert res.end_token_loss is None  # llava-1.5 has no end-of-turn token after the answer


def test_sum_reduction_and_end_token_handling(tiny_vlm):
    vlm = tiny_vlm("gemma3")
    img = random_image(2)
    [mean] = vlm.score([img], "two dogs on a beach")
    [total] = vlm.score([img], "two dogs on a beach", reduction="sum")
    [incl] = vlm.score([img], "two dogs on a beach", include_end_token=True)
    assert total.loss == pytest.approx(sum(mean.token_losses), abs=1e-6)
    assert mean.end_token_loss is not None and not mean.end_token_included
    assert incl.end_token_included
    assert incl.loss == pytest.approx((sum(mean.token_losses) + mean.end_token_loss) / (mean.n_tokens + 1), abs=1e-6)


@pytest.mark.parametrize("family", ["llava", "gemma3", "paligemma"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_equals_one_at_a_time(tiny_vlm, family, side):
    vlm = tiny_vlm(family)
    images = [random_image(3, 20, 30), random_image(4, 64, 40), random_image(5, 33, 33)]
    prompts = ["a cat", "a very long caption about two red birds flying over a stone bridge at sunset", "hi"]
    old = vlm.padding_side
    vlm.padding_side = side
    try:
        batched = vlm.score(images, prompts, batch_size=3)
        single = [vlm.score([im], [p], batch_size=1)[0] for im, p in zip(images, prompts)]
    finally:
        vlm.padding_side = old
    for b, s in zip(batched, single):
        assert b.tokens == s.tokens
        assert b.token_losses == pytest.approx(s.token_losses, abs=1e-5)
        if s.end_token_loss is not None:
            assert b.end_token_loss == pytest.approx(s.end_token_loss, abs=1e-5)


def _rebuild(prompt, spans):
    out, covered = [], 0
    for s, e in spans:
        assert 0 <= s <= e <= len(prompt) and s <= covered  # ordered, no gaps
        out.append(prompt[max(s, covered):e])
        covered = max(covered, e)
    return "".join(out)


@pytest.mark.parametrize("family", ["llava", "gemma3", "paligemma"])
def test_spans_rebuild_unicode_prompt_exactly(tiny_vlm, family):
    vlm = tiny_vlm(family)
    [res] = vlm.score([random_image(6)], UNICODE_PROMPT)
    assert _rebuild(UNICODE_PROMPT, res.spans) == UNICODE_PROMPT
    assert "".join(display_pieces(UNICODE_PROMPT, res.spans)) == UNICODE_PROMPT
    assert len(res.spans) == len(res.tokens) == len(res.token_losses)
    # the scored tokens decode to the prompt (byte-level tokens split multi-byte characters)
    assert [w.text for w in res.words] == UNICODE_PROMPT.split()
    for w in res.words:
        assert UNICODE_PROMPT[w.start:w.end] == w.text and w.n_tokens >= 1


def test_truncation_drops_prompt_tail_and_says_so(tiny_vlm, caplog):
    vlm = tiny_vlm("llava")
    img = random_image(7)
    prompt = " ".join(["red circle left of a blue square"] * 6)
    [full] = vlm.score([img], prompt)
    old = vlm.max_length
    try:
        vlm.max_length = None
        [untouched] = vlm.score([img], prompt)
        base = vlm._process([vlm._prepared_row(img, prompt)])["input_ids"].shape[1]
        vlm.max_length = base - 10
        [cut] = vlm.score([img], prompt)
    finally:
        vlm.max_length = old
    assert untouched.truncated_tokens == 0 and full.truncated_tokens == 0
    assert cut.truncated_tokens >= 10
    assert "prompt 0 truncated" in caplog.text
    assert cut.n_tokens == full.n_tokens - cut.truncated_tokens
    # the kept tokens are a prefix of the full scoring and score the same (causal model)
    assert cut.token_losses == pytest.approx(full.token_losses[:cut.n_tokens], abs=1e-5)
    assert cut.prompt == prompt and cut.spans[-1][1] < len(prompt)


def test_prompt_errors_and_progress(tiny_vlm):
    vlm = tiny_vlm("llava")
    imgs = [random_image(8), random_image(9), random_image(10)]
    with pytest.raises(ScoreInputError, match="prompt 1 is empty or whitespace-only"):
        vlm.score(imgs, ["a cat", "  \n\t", "a dog"])
    with pytest.raises(ScoreInputError, match="3 images but 2 prompts"):
        vlm.score(imgs, ["a", "b"])
    with pytest.raises(ScoreInputError, match="reduction"):
        vlm.score(imgs, "a cat", reduction="median")
    calls = []
    vlm.score(imgs, "a cat", batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 3), (3, 3)]

    def abort(done, total):
        raise KeyboardInterrupt("stop")
    with pytest.raises(KeyboardInterrupt):
        vlm.score(imgs, "a cat", batch_size=1, progress=abort)
    assert not math.isnan(vlm.score(imgs[:1], "a cat")[0].reward)  # usable after an abort


def test_shared_window_fallback_and_full_logits_fallback_agree(tiny_vlm):
    """Older transformers take one 1D position list for all rows; models without logits_to_keep give full
    logits. Both fallbacks must give the per-row result."""
    vlm = tiny_vlm("llava")
    images = [random_image(30), random_image(31)]
    prompts = ["a cat", "two red birds over a bridge"]
    ref = vlm.score(images, prompts)
    for attr in ("_per_row_logits_to_keep", "_has_logits_to_keep"):
        old, old_side = getattr(vlm, attr), vlm.padding_side
        setattr(vlm, attr, False)
        vlm.padding_side = "right"  # windows at different positions per row
        try:
            got = vlm.score(images, prompts)
        finally:
            setattr(vlm, attr, old)
            vlm.padding_side = old_side
        for a, b in zip(got, ref):
            assert a.token_losses == pytest.approx(b.token_losses, abs=1e-5)


def test_one_image_many_prompts_and_special_tokens_refused(tiny_vlm):
    vlm = tiny_vlm("llava")
    img = random_image(32)
    many = vlm.score([img], ["a cat", "a dog"])
    assert [r.prompt for r in many] == ["a cat", "a dog"]
    assert many[1].token_losses == pytest.approx(vlm.score([img], "a dog")[0].token_losses, abs=1e-6)
    with pytest.raises(ScoreInputError, match="prompt 0 contains the model's special token '<image>'"):
        vlm.score([img], "a photo <image> of a cat")


def test_prefetch_pipeline_gives_identical_results(tiny_vlm):
    """The accelerator path prepares batch k+1 on a thread while batch k runs; forced on here on CPU."""
    vlm = tiny_vlm("llava")
    images = [random_image(40 + i, 20 + 7 * i, 30) for i in range(5)]
    prompts = [f"a {w} circle" for w in ("red", "blue", "big red", "small green", "tiny")]
    ref = vlm.score(images, prompts, batch_size=2)
    calls = []
    vlm.prefetch = True
    try:
        got = vlm.score(images, prompts, batch_size=2, progress=lambda d, t: calls.append(d))
        with pytest.raises(RuntimeError, match="abort"):
            vlm.score(images, prompts, batch_size=1, progress=lambda d, t: (_ for _ in ()).throw(RuntimeError("abort")))
    finally:
        vlm.prefetch = None
    assert calls == [2, 4, 5]
    for a, b in zip(got, ref):
        assert a.token_losses == pytest.approx(b.token_losses, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["llava", "qwen3_vl", "gemma3"])
def test_cuda_matches_cpu(tiny_dir, family):
    from promptecho.vlm import load_vlm

    cpu = load_vlm(tiny_dir(family), dtype="fp32", device="cpu")
    gpu = load_vlm(tiny_dir(family), dtype="fp32", device="cuda")
    assert gpu is not cpu and gpu.device.type == "cuda"
    images = [random_image(50 + i, 30 + 9 * i, 40) for i in range(5)]
    prompts = ["a cat", "two dogs on a beach", "a red circle left of a blue square", "hi", UNICODE_PROMPT]
    a = cpu.score(images, prompts, batch_size=2)
    b = gpu.score(images, prompts, batch_size=2)  # several batches: exercises the prefetch thread
    for x, y in zip(a, b):
        assert x.token_losses == pytest.approx(y.token_losses, abs=1e-4)
    gpu.images_on_device = True  # opt-in GPU image processing: same tokens, nearly the same losses
    try:
        for x, y in zip(a, gpu.score(images, prompts, batch_size=2)):
            assert x.tokens == y.tokens and abs(x.loss - y.loss) < 0.05
    finally:
        gpu.images_on_device = False
    half = load_vlm(tiny_dir(family), dtype="auto", device="cuda")
    assert half.dtype in (torch.bfloat16, torch.float16)
    for x, y in zip(a, half.score(images, prompts, batch_size=2)):
        assert abs(x.loss - y.loss) < 0.1


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_outer_whitespace_is_not_scored_and_spans_stay_in_prompt_coordinates(tiny_vlm, family):
    vlm = tiny_vlm(family)
    img = random_image(60)
    [plain] = vlm.score([img], "a red cat")
    [padded] = vlm.score([img], "  a red cat \n")
    assert padded.token_losses == pytest.approx(plain.token_losses, abs=1e-6)
    assert padded.spans == [(s + 2, e + 2) for s, e in plain.spans]
    assert [(w.text, w.start) for w in padded.words] == [("a", 2), ("red", 4), ("cat", 8)]
    assert padded.prompt == "  a red cat \n"


@pytest.mark.parametrize("family", ["llava", "qwen3_vl"])
def test_lm_head_only_sees_the_answer_window(tiny_vlm, family):
    """Logits are computed for the answer positions only, never vocabulary x every position."""
    vlm = tiny_vlm(family)
    seen = []
    head = vlm.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append((tuple(inp[0].shape), tuple(out.shape))))
    try:
        res = vlm.score([random_image(61), random_image(62)], ["a cat", "two red birds over a bridge"])
        row = vlm._prepared_row(random_image(61), "two red birds over a bridge")
        seq_len = vlm._process([row])["input_ids"].shape[1]
    finally:
        hook.remove()
    window = max(r.n_tokens + (r.end_token_loss is not None) for r in res)
    [(inp, out)] = seen
    assert inp[:2] == (2, window) and out[1] == window < seq_len


def test_compile_layers_keeps_results(tiny_dir):
    """compile_layers (opt-in) wraps the decoder layers; checked with dynamo's eager backend (no C compiler)."""
    from promptecho.vlm import VLM, load_vlm

    ref = load_vlm(tiny_dir("llava"), dtype="fp32", device="cpu")
    fresh = VLM(*_fresh_model(tiny_dir("llava")), name="llava-compiled")
    assert fresh.compile_layers(backend="eager") == 2
    images = [random_image(70), random_image(71, 30, 50)]
    prompts = ["a cat", "two red birds over a bridge"]
    for a, b in zip(ref.score(images, prompts), fresh.score(images, prompts)):
        assert a.token_losses == pytest.approx(b.token_losses, abs=1e-5)


def _fresh_model(path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    return model, AutoProcessor.from_pretrained(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compile_layers_inductor_on_cuda(tiny_dir):
    from promptecho.vlm import VLM, load_vlm

    ref = load_vlm(tiny_dir("qwen3_vl"), dtype="fp32", device="cpu")
    model, proc = _fresh_model(tiny_dir("qwen3_vl"))
    fast = VLM(model.to("cuda"), proc, name="qwen3-compiled")
    assert fast.compile_layers() == 2
    images = [random_image(72 + i, 30 + 11 * i, 40) for i in range(4)]
    prompts = ["a cat", "two red birds over a bridge", "hi", "a red circle left of a blue square"]
    for a, b in zip(ref.score(images, prompts, batch_size=2), fast.score(images, prompts, batch_size=2)):
        assert a.token_losses == pytest.approx(b.token_losses, abs=1e-4)
