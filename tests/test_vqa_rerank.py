"""VQAScore rows (next-token P(Yes)) and Best-of-N reranking on the shared batching core."""
import pytest
import torch

from fixtures.engine import random_image, tiny_dir, tiny_vlm  # noqa: F401 (fixtures)
from promptecho import VQA_TEMPLATE
from promptecho.vlm import ScoreInputError


def test_vqascore_reads_the_first_answer_position(tiny_vlm):
    vlm = tiny_vlm("llava")
    img = random_image(20)
    [res] = vlm.vqascore([img], "a cat")
    question = VQA_TEMPLATE.format(prompt="a cat")
    assert question == 'Does this figure show "a cat"? Please answer yes or no.'
    gen = f"USER: <image>\n{question} ASSISTANT:"  # llava-1.5 generation prompt, written by hand
    natural_yes = vlm.tokenizer(gen + " Yes")["input_ids"][-1]  # how the answer is tokenized after it
    natural_no = vlm.tokenizer(gen + " No")["input_ids"][-1]
    # the context ends where that answer token starts (a space is its own token unless " Yes" is one token)
    text = gen if vlm.tokenizer.decode([natural_yes]).startswith(" ") else gen + " "
    enc = vlm.processor(text=[text], images=[[img]], return_tensors="pt")
    with torch.no_grad():
        probs = vlm.model(**enc).logits[0, -1].float().softmax(-1)
    row = vlm._prepared_vqa_row(img, "a cat")
    assert natural_yes in row.yes_ids and natural_no in row.no_ids
    assert not set(row.yes_ids) & set(row.no_ids)
    assert res.p_yes == pytest.approx(probs[list(row.yes_ids)].sum().item(), abs=1e-6)
    assert res.p_no == pytest.approx(probs[list(row.no_ids)].sum().item(), abs=1e-6)
    assert res.p_yes_norm == pytest.approx(res.p_yes / (res.p_yes + res.p_no))


@pytest.mark.parametrize("family", ["llava", "qwen3_vl", "paligemma", "smolvlm"])
def test_mixed_batch_equals_separate_runs(tiny_vlm, family):
    vlm = tiny_vlm(family)
    images = [random_image(21, 30, 40), random_image(22, 70, 50), random_image(23)]
    prompts = ["a cat", "two dogs running on a beach at sunset", "a red square"]
    scores, vqas = vlm.score_and_vqa(images, prompts, batch_size=4)  # 6 rows: batches mix both kinds
    alone_scores = vlm.score(images, prompts, batch_size=1)
    alone_vqas = vlm.vqascore(images, prompts, batch_size=1)
    for a, b in zip(scores, alone_scores):
        assert a.token_losses == pytest.approx(b.token_losses, abs=1e-5)
    for a, b in zip(vqas, alone_vqas):
        assert a.p_yes == pytest.approx(b.p_yes, abs=1e-6) and a.p_no == pytest.approx(b.p_no, abs=1e-6)
        assert 0.0 < a.p_yes < 1.0 and 0.0 < a.p_yes_norm < 1.0


@pytest.mark.parametrize("method", ["promptecho", "vqascore"])
def test_rerank_descending_with_stable_ties(tiny_vlm, method):
    vlm = tiny_vlm("llava")
    a, b, c = random_image(24), random_image(25), random_image(26)
    images = [a, b, a, c, b]  # duplicates score identically: ties keep the lower index first
    rr = vlm.rerank(images, "a blue circle", method=method)
    assert sorted(rr.order) == list(range(5)) and len(rr.results) == 5
    ranked = rr.sorted_scores
    assert all(x >= y for x, y in zip(ranked, ranked[1:]))
    assert rr.scores[0] == rr.scores[2] and rr.scores[1] == rr.scores[4]
    assert rr.order.index(0) < rr.order.index(2) and rr.order.index(1) < rr.order.index(4)
    assert rr.best == rr.order[0]
    if method == "promptecho":
        assert rr.scores == [r.reward for r in rr.results]
    else:
        assert rr.scores == [r.p_yes for r in rr.results]


def test_rerank_rejects_unknown_method(tiny_vlm):
    with pytest.raises(ScoreInputError, match="method must be"):
        tiny_vlm("llava").rerank([random_image(27)], "a cat", method="clip")
