"""Load a frozen Hugging Face vision-language model and score (image, prompt) pairs with it.

PromptEcho: reward = -CE(prompt | image, query) in one teacher-forced forward pass, CE over the prompt
tokens only. VQAScore (the baseline) reads P("Yes") at the first answer position of
`Does this figure show "{prompt}"? Please answer yes or no.`. Both row kinds share one batching core, so
they can be mixed in a single forward pass (`score_and_vqa`).
"""
from __future__ import annotations

import glob
import inspect
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import DEFAULT_QUERY, VQA_TEMPLATE
from .images import to_pil_list
from .results import RerankResult, ScoreResult, VQAResult
from .scoring import (answer_token_range, left_or_right_positions, reduce_losses, rerank_order, token_losses,
                      token_spans, window_index, word_scores, yes_no_tensor)
from .templates import RowText, TemplateBuilder, TemplateError

__all__ = ["VLM", "VLMLoadError", "ScoreInputError", "load_vlm", "clear_cache"]

log = logging.getLogger("promptecho")


class VLMLoadError(ValueError):
    """The model folder cannot be loaded as a PromptEcho scorer; the message says why and what to do."""


class ScoreInputError(ValueError):
    """Prompts, images or options passed to a scoring call are unusable."""


class AlignmentError(RuntimeError):
    """The processed sequence does not end with the tokens the engine expected (a processor quirk)."""


_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
_PICKLE_EXT = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_YES = ("Yes", " Yes", "yes", " yes", "YES", " YES")
_NO = ("No", " No", "no", " no", "NO", " NO")

_CACHE: Dict[Tuple[str, str, str], "VLM"] = {}
_CACHE_LOCK = threading.RLock()


def _resolve_device(device: Any) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise VLMLoadError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VLMLoadError("device 'cuda' requested but CUDA is not available in this torch build")
    return dev


def _resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU half precision is slow and lossy
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise VLMLoadError(f"unknown dtype {dtype!r}: use 'auto', 'bf16', 'fp16' or 'fp32'")
    return _DTYPES[key]


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~"))


def _check_local_folder(path: str, trust_remote_code: bool, allow_pickle: bool) -> dict:
    """Fail early, with a specific message, on folders transformers would reject obscurely (or unsafely)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise VLMLoadError(f"{path} has no config.json: it is not a transformers model folder "
                           "(expected config.json, *.safetensors and the processor/tokenizer files)")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise VLMLoadError(f"cannot read {cfg_file}: {e}") from e
    model_type = cfg.get("model_type")
    if model_type not in CONFIG_MAPPING:
        if cfg.get("auto_map"):
            if not trust_remote_code:
                raise VLMLoadError(
                    f"{path} needs trust_remote_code: its config maps to custom Python code shipped with the model "
                    f"({', '.join(sorted(cfg['auto_map']))}), which would run on load. Refused; pass "
                    "trust_remote_code=True only if you trust the files in this folder.")
        else:
            raise VLMLoadError(f"{path}: unknown model_type {model_type!r}; this transformers version cannot load it")
    elif model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise VLMLoadError(f"{path} holds a '{model_type}' model, which is not an image-text-to-text model; "
                           "PromptEcho needs a vision-language model (e.g. Qwen2.5-VL, Qwen3-VL, SmolVLM, "
                           "LLaVA, Gemma 3, PaliGemma)")
    files = os.listdir(path)
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    pickles = sorted(f for f in files if f.endswith(_PICKLE_EXT) and not f.startswith("training_args"))
    if not has_safetensors:
        if pickles and not allow_pickle:
            raise VLMLoadError(
                f"{path} has weights only in pickle form ({', '.join(pickles)}); loading pickle can run arbitrary "
                "code. Convert them to safetensors, or pass allow_pickle=True if you trust the file.")
        if not pickles:
            raise VLMLoadError(f"{path} has no weight files (*.safetensors)")
    return cfg


def load_vlm(path: str, dtype: Any = "auto", device: Any = "auto", allow_download: bool = False,
             trust_remote_code: bool = False, allow_pickle: bool = False) -> "VLM":
    """Load (or return the cached) frozen VLM from a local folder.

    Hub ids are accepted only with allow_download=True; otherwise nothing is fetched (local_files_only).
    Cached by (real path, dtype, device): a second call with the same triple returns the same object.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise VLMLoadError("model path is empty")
    path = os.path.expanduser(str(path))
    dev = _resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    local = os.path.isdir(path)
    if not local:
        if not (allow_download and _looks_like_hub_id(path)):
            hint = (" (it looks like a hub id: downloads are off unless allow_download=True)"
                    if _looks_like_hub_id(path) else "")
            raise VLMLoadError(f"model folder not found: {path}{hint}")
    key_path = os.path.realpath(path) if local else path
    key = (key_path, str(dt).replace("torch.", ""), str(dev))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        vlm = _load_uncached(path, local, dt, dev, allow_download, trust_remote_code, allow_pickle)
        vlm._cache_key = key
        _CACHE[key] = vlm
        return vlm


def _load_uncached(path, local, dt, dev, allow_download, trust_remote_code, allow_pickle) -> "VLM":
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if local:
        _check_local_folder(path, trust_remote_code, allow_pickle)
    common = dict(local_files_only=not allow_download, trust_remote_code=bool(trust_remote_code))
    try:
        processor = AutoProcessor.from_pretrained(path, **common)
    except ImportError as e:
        raise VLMLoadError(f"the processor of {path} needs a missing package: {' '.join(str(e).split())}") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VLMLoadError(f"cannot load the processor of {path}: {e}") from e
    if getattr(processor, "tokenizer", None) is None:
        raise VLMLoadError(f"{path}: the processor has no tokenizer, so it cannot score text")
    try:
        builder = TemplateBuilder(processor)
    except TemplateError as e:
        raise VLMLoadError(f"{path}: {e}") from e
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dt, use_safetensors=not allow_pickle, output_loading_info=True, **common)
    except (OSError, ValueError, KeyError) as e:
        raise VLMLoadError(f"cannot load the model weights of {path}: {e}") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would silently initialise them at random: scores would be noise
        raise VLMLoadError(f"{path}: the checkpoint lacks {len(missing)} weight(s) the architecture needs "
                           f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); they would be random, "
                           "so the scores would be meaningless. Check that the weights match config.json.")
    model.to(dev).eval().requires_grad_(False)
    return VLM(model, processor, name=os.path.basename(os.path.normpath(path)) or path, path=path,
               builder=builder)


def clear_cache() -> None:
    """Forget all cached models (their memory is freed once no caller holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


@dataclass
class _Row:
    """One sequence of a batch: a PromptEcho row (teacher-forced prompt) or a VQA row (next-token read)."""
    kind: str  # "score" | "vqa"
    index: int  # position in the caller's list
    image: Any
    prompt: str
    query: str
    system_prompt: Optional[str]
    text: RowText = None
    ids: List[int] = field(default_factory=list)  # plain tokenization of text.tail_text
    i0: int = 0
    i1: int = 0
    end_idx: Optional[int] = None
    spans: list = field(default_factory=list)
    cut: Optional[int] = None  # prompt characters kept after truncation
    n_full: int = 0  # answer tokens before truncation
    yes_ids: Tuple[int, ...] = ()
    no_ids: Tuple[int, ...] = ()
    vqa_back: int = 1  # the prediction is read this many tokens before the end of the row
    losses: List[float] = field(default_factory=list)  # score rows: answer (+ end) token losses
    p: Tuple[float, float] = (0.0, 0.0)  # vqa rows: (P(yes), P(no))


class VLM:
    """A frozen VLM plus its processor. Build with `load_vlm`."""

    def __init__(self, model, processor, name: str = "", path: str = "", builder: TemplateBuilder = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.path = path
        self.builder = builder or TemplateBuilder(processor)
        self.padding_side = "left"  # right padding gives identical results; left is what generation uses
        self.prefetch: Optional[bool] = None  # prepare the next batch on a thread; None: only on accelerators
        # opt-in: image resizing/normalising on the model's device (torchvision-backed processors only);
        # faster on GPUs, but resampling there differs slightly from the CPU path
        self.images_on_device = False
        self.max_length = self._model_max_length()
        self._cache_key = None
        self._lock = threading.RLock()
        self._token_text: Dict[int, str] = {}  # token id -> that token decoded alone (see _token_strings)
        params = inspect.signature(model.forward).parameters
        self._has_logits_to_keep = "logits_to_keep" in params
        # transformers versions with `slice_logits_to_keep` accept a per-row [B, K] position tensor
        import transformers.modeling_utils as mu
        self._per_row_logits_to_keep = hasattr(mu, "slice_logits_to_keep")
        self._variant_cache: Dict[str, Tuple[int, ...]] = {}

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: Any) -> "VLM":
        dev = _resolve_device(device)
        with _CACHE_LOCK:
            self.model.to(dev)
            if self._cache_key is not None and _CACHE.get(self._cache_key) is self:
                del _CACHE[self._cache_key]
                self._cache_key = (self._cache_key[0], self._cache_key[1], str(dev))
                _CACHE[self._cache_key] = self
        return self

    def compile_layers(self, backend: str = "inductor") -> int:
        """Opt-in: torch.compile every text decoder layer (dynamic shapes). The first batches then take
        about a minute to compile; afterwards a GPU forward is ~25 % faster (H100, Qwen3-VL-8B shapes).
        Returns the number of compiled layers."""
        import torch._dynamo

        layers = [m for m in self.model.modules() if type(m).__name__.endswith("DecoderLayer")]
        # one compiled graph per layer instance: raise dynamo's per-code cache so none falls back to eager
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(layers) + 8)
        for layer in layers:
            layer.compile(dynamic=True, backend=backend)
        return len(layers)

    def __repr__(self) -> str:
        return f"VLM({self.name!r}, {type(self.model).__name__}, device={self.device}, dtype={self.dtype})"

    def _model_max_length(self) -> Optional[int]:
        cfg = self.model.config
        text_cfg = getattr(cfg, "text_config", None) or cfg
        limits = [getattr(text_cfg, "max_position_embeddings", None)]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 10 ** 8:
            limits.append(tok_max)
        limits = [x for x in limits if isinstance(x, int) and x > 0]
        return min(limits) if limits else None

    # ------------------------------------------------------------------ public API
    def score(self, images, prompts, query: str = DEFAULT_QUERY, system_prompt: Optional[str] = None,
              reduction: str = "mean", include_end_token: bool = False, batch_size: int = 8,
              progress: Optional[Callable[[int, int], None]] = None) -> List[ScoreResult]:
        """PromptEcho reward of each (image, prompt) pair; `prompts` is one str or a list aligned with images.

        system_prompt=None keeps the chat template's default (Qwen2.5-VL injects "You are a helpful
        assistant."; most others add nothing); a string puts an explicit system turn first.
        """
        results, _ = self.score_and_vqa(images, prompts, query=query, system_prompt=system_prompt,
                                        reduction=reduction, include_end_token=include_end_token,
                                        batch_size=batch_size, progress=progress, vqa=False)
        return results

    def vqascore(self, images, prompts, batch_size: int = 8, progress: Optional[Callable[[int, int], None]] = None,
                 system_prompt: Optional[str] = None) -> List[VQAResult]:
        """VQAScore baseline: P("Yes") (and P(yes)/(P(yes)+P(no))) after VQA_TEMPLATE.format(prompt=...)."""
        _, results = self.score_and_vqa(images, prompts, system_prompt=system_prompt, batch_size=batch_size,
                                        progress=progress, promptecho=False)
        return results

    def score_and_vqa(self, images, prompts, query: str = DEFAULT_QUERY, system_prompt: Optional[str] = None,
                      reduction: str = "mean", include_end_token: bool = False, batch_size: int = 8,
                      progress: Optional[Callable[[int, int], None]] = None, promptecho: bool = True,
                      vqa: bool = True) -> Tuple[List[ScoreResult], List[VQAResult]]:
        """PromptEcho and VQAScore rows for every pair, mixed in the same forward passes."""
        if reduction not in ("mean", "sum"):
            raise ScoreInputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ScoreInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(query, str) or not query.strip():
            raise ScoreInputError("query is empty or whitespace-only")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ScoreInputError("system_prompt must be a string or None")
        pil = to_pil_list(images)
        prompt_list = _align_prompts(prompts, len(pil))
        if len(pil) == 1 and len(prompt_list) > 1:  # one image, several prompts: score each against it
            pil = pil * len(prompt_list)
        self._reject_special_tokens(query, "query")
        for i, p in enumerate(prompt_list):
            self._reject_special_tokens(p, f"prompt {i}")
        rows: List[_Row] = []
        for i, (img, p) in enumerate(zip(pil, prompt_list)):
            if promptecho:
                rows.append(_Row("score", i, img, p, query, system_prompt))
            if vqa:
                rows.append(_Row("vqa", i, img, p, VQA_TEMPLATE.format(prompt=p), system_prompt))
        with self._lock:
            for r in rows:
                self._prepare(r)
            self._run(rows, batch_size, progress)
        scores = [self._score_result(r, reduction, include_end_token) for r in rows if r.kind == "score"]
        vqas = [self._vqa_result(r) for r in rows if r.kind == "vqa"]
        return scores, vqas

    def rerank(self, images, prompt: str, method: str = "promptecho", **score_kwargs) -> RerankResult:
        """Best-of-N for one prompt: order by descending score (reward, or P(yes) for VQAScore)."""
        if method == "promptecho":
            results = self.score(images, prompt, **score_kwargs)
            scores = [r.reward for r in results]
        elif method == "vqascore":
            results = self.vqascore(images, prompt, **score_kwargs)
            scores = [r.p_yes for r in results]
        else:
            raise ScoreInputError(f"method must be 'promptecho' or 'vqascore', got {method!r}")
        return RerankResult(order=rerank_order(scores), scores=scores, results=results)

    # ------------------------------------------------------------------ row preparation
    def _encode(self, text: str, special: bool):
        enc = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def _prepare(self, row: _Row) -> None:
        if row.kind == "score":
            body = row.prompt if row.cut is None else row.prompt[:row.cut]
            # outer whitespace carries no content (Gemma templates trim it); spans stay in prompt coordinates
            lead = len(body) - len(body.lstrip())
            row.text = self.builder.score_row(body.strip(), row.query, row.system_prompt)
            ids, offs = self._encode(row.text.tail_text, row.text.tail_special_tokens)
            a0, a1 = row.text.answer
            row.i0, row.i1 = answer_token_range(offs, a0, a1)
            if row.i1 <= row.i0:
                raise ScoreInputError(f"prompt {row.index} produced no tokens")
            row.ids = ids
            end_id = self.tokenizer.convert_tokens_to_ids(row.text.end_token) if row.text.end_token else None
            row.end_idx = row.i1 if (end_id is not None and row.i1 < len(ids) and ids[row.i1] == end_id) else None
            row.spans = [(s + lead, e + lead) for s, e in token_spans(offs[row.i0:row.i1], a0, a1)]
            if row.cut is None:
                row.n_full = row.i1 - row.i0
        else:
            self._prepare_vqa(row)

    def _prepare_vqa(self, row: _Row) -> None:
        rt, prefix = self.builder.vqa_context(row.query, row.system_prompt)
        special = rt.tail_special_tokens
        if self.builder.path == "prefix_suffix":
            # sequence ends "<question>\n" + EOS: the token before EOS predicts the answer
            first_yes = self.tokenizer("Yes", add_special_tokens=False)["input_ids"][:1]
            first_no = self.tokenizer("No", add_special_tokens=False)["input_ids"][:1]
            row.text, row.ids, row.vqa_back = rt, self._encode(rt.tail_text, False)[0], 2
        else:
            y, _ = self._encode(prefix + "Yes", special)
            n, _ = self._encode(prefix + "No", special)
            k = 0
            while k < min(len(y), len(n)) and y[k] == n[k]:
                k += 1
            ctx = y[:k]
            # the context is the rendered assistant prefix minus whitespace the answer token absorbs
            for cand in (prefix, prefix.rstrip(" "), prefix.rstrip()):
                if self._encode(cand, special)[0] == ctx:
                    break
            else:
                cand = prefix.rstrip()
                ctx = self._encode(cand, special)[0]
            first_yes, first_no = y[k:k + 1], n[k:k + 1]
            row.text = RowText(text=cand, suffix=None, tail_text=cand, tail_special_tokens=special,
                               answer=(len(cand), len(cand)), end_token=None, add_special_tokens=rt.add_special_tokens)
            row.ids, row.vqa_back = ctx, 1
        yes = set(first_yes) | set(self._single_token_variants(_YES))
        no = set(first_no) | set(self._single_token_variants(_NO))
        row.yes_ids, row.no_ids = tuple(sorted(yes - no)), tuple(sorted(no - yes))  # a shared token says neither
        if not row.yes_ids or not row.no_ids:
            raise ScoreInputError(f"{self.name}: cannot find 'Yes'/'No' tokens in the vocabulary for VQAScore")

    def _single_token_variants(self, words: Sequence[str]) -> Tuple[int, ...]:
        key = "|".join(words)
        if key not in self._variant_cache:
            ids = set()
            for w in words:
                t = self.tokenizer(w, add_special_tokens=False)["input_ids"]
                if len(t) == 1:
                    ids.add(t[0])
            self._variant_cache[key] = tuple(sorted(ids))
        return self._variant_cache[key]

    def _prepared_row(self, image, prompt: str, query: str = DEFAULT_QUERY,
                      system_prompt: Optional[str] = None) -> _Row:
        """A prepared PromptEcho row (for tests and benchmarks that need the engine's exact sequence)."""
        row = _Row("score", 0, to_pil_list(image)[0], prompt, query, system_prompt)
        self._prepare(row)
        return row

    def _prepared_vqa_row(self, image, prompt: str, system_prompt: Optional[str] = None) -> _Row:
        row = _Row("vqa", 0, to_pil_list(image)[0], prompt, VQA_TEMPLATE.format(prompt=prompt), system_prompt)
        self._prepare(row)
        return row

    # ------------------------------------------------------------------ batching core
    def _reject_special_tokens(self, text: str, what: str) -> None:
        # the processor would read e.g. "<image>" in a prompt as an image slot and the tokenizer would turn
        # "<|im_end|>" into a control token: refuse rather than score something other than the text
        for tok in self.builder.special_strings:
            if tok in text:
                raise ScoreInputError(f"{what} contains the model's special token {tok!r}; remove it")

    def _run(self, rows: List[_Row], batch_size: int, progress) -> None:
        total = len(rows)
        # rows of similar length share a batch: less padding (results do not depend on the grouping)
        rows = sorted(rows, key=lambda r: len(r.ids))
        groups: List[List[_Row]] = []
        for b in range(0, total, batch_size):
            # one processor call needs one add_special_tokens value (differs only with unusual templates)
            by_flag: Dict[bool, List[_Row]] = {}
            for r in rows[b:b + batch_size]:
                by_flag.setdefault(r.text.add_special_tokens, []).append(r)
            groups.extend(by_flag.values())
        done = 0
        prefetch = self.prefetch if self.prefetch is not None else self.device.type != "cpu"
        if len(groups) == 1 or not prefetch:
            for group in groups:
                self._forward_rows(group, self._fit_lengths(group))
                done += len(group)
                if progress is not None:
                    progress(done, total)
            return
        # accelerator: prepare batch k+1 (image processing, tokenization) on a CPU thread while the
        # device runs batch k; on CPU the two would only compete for the same cores
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._fit_lengths, groups[0])
            for k, group in enumerate(groups):
                prepared = pending.result()
                if k + 1 < len(groups):
                    pending = pool.submit(self._fit_lengths, groups[k + 1])
                try:
                    self._forward_rows(group, prepared)
                except BaseException:
                    pending.cancel()
                    raise
                done += len(group)
                if progress is not None:
                    try:
                        progress(done, total)
                    except BaseException:
                        pending.cancel()
                        raise

    def _process(self, rows: List[_Row]):
        kwargs = dict(text=[r.text.text for r in rows], images=[[r.image] for r in rows], padding=True,
                      return_tensors="pt", add_special_tokens=rows[0].text.add_special_tokens)
        if self.builder.path == "prefix_suffix":
            kwargs["suffix"] = [r.text.suffix for r in rows]
        if self.images_on_device and self.device.type != "cpu":
            kwargs["device"] = str(self.device)  # torchvision-backed image processors resize on the device
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = self.padding_side
        try:
            return self.processor(**kwargs)
        finally:
            tok.padding_side = old_side

    def _fit_lengths(self, rows: List[_Row]):
        """Process the batch; truncate the tail of prompts that push a row past the model's length limit."""
        for _ in range(4):
            enc = self._process(rows)
            bounds = left_or_right_positions(enc["attention_mask"])
            changed = False
            for r, (s, e) in zip(rows, bounds):
                over = (e - s) - self.max_length if self.max_length else 0
                if over <= 0:
                    continue
                n_ans = r.i1 - r.i0
                if r.kind != "score" or over >= n_ans:
                    raise ScoreInputError(
                        f"pair {r.index}: image, query and template take {e - s - (n_ans if r.kind == 'score' else 0)}"
                        f" tokens, which leaves no room for the prompt within the model limit of {self.max_length}")
                keep = n_ans - over
                cut = r.spans[keep][0]
                prompt = (r.prompt if r.cut is None else r.prompt[:r.cut])[:cut].rstrip()
                if not prompt:
                    raise ScoreInputError(f"pair {r.index}: no prompt text fits the model limit of {self.max_length}")
                r.cut = len(prompt)
                self._prepare(r)
                log.warning("%s: prompt %d truncated to %d of %d tokens (model limit %d tokens in all)", self.name,
                            r.index, r.i1 - r.i0, r.n_full, self.max_length)
                changed = True
            if not changed:
                return enc, bounds
        raise ScoreInputError("could not fit the prompts into the model's length limit")

    def _forward_rows(self, rows: List[_Row], prepared) -> None:
        enc, bounds = prepared
        ids = enc["input_ids"]
        positions, targets = [], []
        for k, (r, (s, e)) in enumerate(zip(rows, bounds)):
            n = len(r.ids)
            if r.kind == "score":
                tail = r.ids[r.i0:]
                got = ids[k, e - len(tail):e].tolist()
                if got != tail:
                    raise AlignmentError(f"{self.name}: processed sequence does not end with the prompt tokens "
                                         f"(expected {tail[:8]}..., got {got[:8]}...)")
                last = r.end_idx + 1 if r.end_idx is not None else r.i1
                # token j of the plain encoding sits at e - n + j and is predicted from the position before it
                positions.append([e - n + j - 1 for j in range(r.i0, last)])
                targets.append(r.ids[r.i0:last])
            else:
                if ids[k, e - 1].item() != r.ids[-1]:
                    raise AlignmentError(f"{self.name}: VQA row does not end with the expected context token")
                positions.append([e - r.vqa_back])
                targets.append([])
        inputs = {k: v for k, v in enc.items() if k not in ("labels", "offset_mapping")}
        dev, dt = self.device, self.dtype
        inputs = {k: (v.to(dev, dt) if torch.is_floating_point(v) else v.to(dev)) if torch.is_tensor(v) else v
                  for k, v in inputs.items()}
        keep = window_index(positions).to(dev)
        with torch.inference_mode():
            if self._has_logits_to_keep and self._per_row_logits_to_keep:
                logits = self.model(**inputs, logits_to_keep=keep).logits
            elif self._has_logits_to_keep:  # older transformers: one 1D index list shared by all rows
                union = torch.unique(keep)
                sliced = self.model(**inputs, logits_to_keep=union).logits
                logits = torch.take_along_dim(sliced, torch.searchsorted(union, keep)[..., None], dim=1)
            else:  # fallback: full logits, sliced before the fp32 log-softmax
                full = self.model(**inputs).logits
                logits = torch.take_along_dim(full, keep[..., None], dim=1)
        # every row's numbers stay on the device and reach the host in one copy: one sync per batch, not per row
        width = max(1, max(len(t) for t in targets))
        padded = torch.tensor([t + [0] * (width - len(t)) for t in targets], device=logits.device)
        out = [token_losses(logits[k, :len(targets[k])], padded[k, :len(targets[k])]) if r.kind == "score"
               else yes_no_tensor(logits[k, 0], r.yes_ids, r.no_ids) for k, r in enumerate(rows)]
        host = torch.cat(out).cpu().split([len(o) for o in out])
        for r, values in zip(rows, host):
            if r.kind == "score":
                r.losses = values.tolist()
            else:
                r.p = tuple(values.tolist())

    # ------------------------------------------------------------------ results
    def _score_result(self, r: _Row, reduction: str, include_end_token: bool) -> ScoreResult:
        n_ans = r.i1 - r.i0
        answer_losses = r.losses[:n_ans]
        end_loss = r.losses[n_ans] if r.end_idx is not None else None
        counted = answer_losses + ([end_loss] if include_end_token and end_loss is not None else [])
        loss = reduce_losses(counted, reduction)
        tokens = self._token_strings(r.ids[r.i0:r.i1])
        spans = [tuple(s) for s in r.spans]
        return ScoreResult(prompt=r.prompt, reward=-loss, loss=loss, reduction=reduction,
                           token_losses=[float(x) for x in answer_losses], tokens=tokens, spans=spans,
                           words=word_scores(r.prompt, spans, answer_losses),
                           end_token_loss=None if end_loss is None else float(end_loss),
                           end_token_included=bool(include_end_token and end_loss is not None),
                           truncated_tokens=max(0, r.n_full - n_ans) if r.cut is not None else 0,
                           query=r.query, model=self.name, system_prompt=r.system_prompt)

    def _token_strings(self, ids) -> List[str]:
        """Each token decoded on its own, cached per id (decoding one id is a pure function of the tokenizer;
        decoding every answer token on every call was ~5 % of score() on a small model)."""
        cache = self._token_text
        ids = [int(t) for t in ids]
        missing = sorted({t for t in ids if t not in cache})
        if missing:
            texts = self.tokenizer.batch_decode([[t] for t in missing], skip_special_tokens=False,
                                                clean_up_tokenization_spaces=False)
            cache.update(zip(missing, texts))
        return [cache[t] for t in ids]

    def _vqa_result(self, r: _Row) -> VQAResult:
        p_yes, p_no = r.p
        denom = p_yes + p_no
        return VQAResult(prompt=r.prompt, p_yes=p_yes, p_no=p_no,
                         p_yes_norm=p_yes / denom if denom > 0 else 0.5, model=self.name)


def _align_prompts(prompts, n: int) -> List[str]:
    if isinstance(prompts, str):
        prompts = [prompts] * n
    elif isinstance(prompts, (list, tuple)):
        prompts = list(prompts)
        if len(prompts) == 1 and n > 1:
            prompts = prompts * n
        if len(prompts) != n and n != 1:
            raise ScoreInputError(f"got {n} images but {len(prompts)} prompts; pass one prompt, one image, "
                                  "or one prompt per image")
    else:
        raise ScoreInputError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ScoreInputError(f"prompt {i} is not a string ({type(p).__name__})")
        if not p.strip():
            raise ScoreInputError(f"prompt {i} is empty or whitespace-only; there is nothing to score")
    return prompts
