"""Build the teacher-forced text of one row for each model family, and say where the answer sits in it.

Two paths:
- chat template: render [system?] + user(image, query) + assistant(MARKER) with the processor's own chat
  template, split at the marker and put the prompt in its place. The answer is then located by
  *character offsets*, never by counting tokens of a "prompt-only" rendering (the space after
  `Assistant:` merges into the first answer token for SmolVLM/Idefics3 and LLaVA templates).
- prefix/suffix (PaliGemma, no chat template): the processor takes the query as prefix and the prompt as
  `suffix` (it appends EOS and marks the suffix with token_type_ids=1).

Everything after the end-of-turn token (a trailing newline, say) is dropped: with causal attention it
cannot change the loss of earlier tokens, and it costs compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

MARKER = "PROMPTECHOANSWERSLOT"


class TemplateError(ValueError):
    """The processor has no usable way to build a teacher-forced sequence."""


@dataclass
class RowText:
    """The text inputs of one row and where its answer sits.

    `tail_text` tokenized on its own (with `tail_special_tokens`) ends exactly like the processed sequence,
    so answer tokens can be aligned from the end of the sequence (image placeholders expand only earlier).
    """
    text: str  # processor `text` input
    suffix: Optional[str]  # processor `suffix` input (prefix/suffix path only)
    tail_text: str
    tail_special_tokens: bool
    answer: Tuple[int, int]  # character range of the answer (prompt) inside tail_text
    end_token: Optional[str]  # end-of-turn token string right after the answer, if the template has one
    add_special_tokens: bool  # passed to the processor


def _special_strings(tokenizer) -> List[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            specials.add(str(tok))
    return sorted((s for s in specials if s), key=len, reverse=True)


def has_prefix_suffix_path(processor) -> bool:
    """PaliGemma-style processors take `suffix=` and build `<image>...<bos>prefix\\n` + suffix + EOS."""
    return "PaliGemma" in type(processor).__name__


def chat_template_of(processor) -> Optional[str]:
    tpl = getattr(processor, "chat_template", None)
    if not tpl:
        tpl = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    return tpl or None


def check_buildable(processor) -> str:
    """Return 'chat' or 'prefix_suffix'; raise TemplateError when neither is possible."""
    if has_prefix_suffix_path(processor):
        return "prefix_suffix"
    if chat_template_of(processor):
        return "chat"
    raise TemplateError(
        f"{type(processor).__name__} has no chat template and no known prefix/suffix path, so there is no way to "
        "know how the model expects an answer to follow the image and query. Add a chat_template.jinja (or "
        "'chat_template' in processor_config.json) to the model folder.")


class TemplateBuilder:
    """Builds RowText objects for one processor (one model family)."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.path = check_buildable(processor)
        self._specials = _special_strings(self.tokenizer)
        self.special_strings = tuple(self._specials)
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        self._split_cache: dict = {}

    # -- chat path ---------------------------------------------------------------------------------------
    def _render_split(self, user_text: str, system_prompt: Optional[str]) -> Tuple[str, str]:
        key = (user_text, system_prompt)
        hit = self._split_cache.get(key)
        if hit is None:  # rendering Jinja per row is slow; every row with the same query shares the split
            hit = self._render_split_uncached(user_text, system_prompt)
            if len(self._split_cache) > 256:
                self._split_cache.clear()
            self._split_cache[key] = hit
        return hit

    def _render_split_uncached(self, user_text: str, system_prompt: Optional[str]) -> Tuple[str, str]:
        # content as a list of typed parts (what multimodal templates expect); some templates render an
        # assistant turn only from a plain string, and would print the list's repr around the marker
        errors = []
        for assistant_content in ([{"type": "text", "text": MARKER}], MARKER):
            messages = []
            if system_prompt is not None:
                messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
            messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]})
            messages.append({"role": "assistant", "content": assistant_content})
            try:
                rendered = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            except Exception as e:  # jinja raise_exception(...), e.g. "system role not supported"
                errors.append(str(e))
                continue
            if isinstance(rendered, list):
                rendered = rendered[0]
            if rendered.count(MARKER) != 1:
                errors.append("the assistant text is not rendered verbatim")
                continue
            prefix, suffix = rendered.split(MARKER)
            if prefix.rstrip().endswith(("'text': '", '"text": "')):
                errors.append("the assistant content list is rendered as Python data")
                continue
            return prefix, suffix
        what = "with this system prompt" if system_prompt is not None else "for an image + text user turn"
        raise TemplateError(f"the model's chat template cannot render a conversation {what}: "
                            + "; ".join(dict.fromkeys(errors)))

    def _add_special(self, text: str) -> bool:
        # Gemma3-style templates emit BOS themselves; the tokenizer would add a second one.
        bos = getattr(self.tokenizer, "bos_token", None)
        return not (bos and text.startswith(bos))

    def _end_token(self, suffix: str) -> Optional[str]:
        for s in self._specials:
            if suffix.startswith(s):
                return s
        return None

    def score_row(self, prompt: str, query: str, system_prompt: Optional[str]) -> RowText:
        if self.path == "prefix_suffix":
            eos = self.tokenizer.eos_token
            return RowText(text=self.image_token + query, suffix=prompt, tail_text=prompt + eos,
                           tail_special_tokens=False, answer=(0, len(prompt)), end_token=eos,
                           add_special_tokens=True)
        prefix, suffix = self._render_split(query, system_prompt)
        end = self._end_token(suffix)
        text = prefix + prompt + (end or "")
        add = self._add_special(text)
        return RowText(text=text, suffix=None, tail_text=text, tail_special_tokens=add,
                       answer=(len(prefix), len(prefix) + len(prompt)), end_token=end, add_special_tokens=add)

    def vqa_context(self, question: str, system_prompt: Optional[str]) -> Tuple[RowText, str]:
        """Row whose last context token predicts the answer; also returns the rendered answer prefix text.

        For the chat path the context is the assistant-turn prefix (e.g. 'ASSISTANT: '); the caller trims
        whitespace that the tokenizer would merge into the answer token. For PaliGemma the suffix is empty
        (only EOS follows) and the prediction is read one token before the end.
        """
        if self.path == "prefix_suffix":
            eos = self.tokenizer.eos_token
            return (RowText(text=self.image_token + question, suffix="", tail_text=eos, tail_special_tokens=False,
                            answer=(0, 0), end_token=eos, add_special_tokens=True), "")
        prefix, _ = self._render_split(question, system_prompt)
        add = self._add_special(prefix)
        return (RowText(text=prefix, suffix=None, tail_text=prefix, tail_special_tokens=add, answer=(len(prefix),) * 2,
                        end_token=None, add_special_tokens=add), prefix)
