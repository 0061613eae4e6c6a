"""Typed results shared by the engine, the ComfyUI nodes, the Gradio UI and the trainer."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple


@dataclass
class WordScore:
    """One whitespace-delimited word of the prompt and the mean loss of the tokens overlapping it."""
    text: str
    start: int  # character offsets into the original prompt, end exclusive
    end: int
    loss: float
    n_tokens: int


@dataclass
class ScoreResult:
    """PromptEcho score of one (image, prompt) pair. reward = -loss."""
    prompt: str
    reward: float
    loss: float  # CE of the prompt tokens under `reduction`
    reduction: str  # "mean" | "sum"
    token_losses: List[float]  # -log p(token) per prompt token, in order
    tokens: List[str]  # decoded text of each token
    spans: List[Tuple[int, int]]  # character span of each token in `prompt` (end exclusive)
    words: List[WordScore]
    end_token_loss: Optional[float] = None  # loss of the end-of-turn token, if the template has one
    end_token_included: bool = False
    truncated_tokens: int = 0  # prompt tokens dropped because of the model's length limit
    query: str = ""
    model: str = ""
    system_prompt: Optional[str] = None  # None: the chat template's default system turn (if any)

    @property
    def n_tokens(self) -> int:
        return len(self.token_losses)

    def to_json(self) -> dict:
        d = asdict(self)
        d["spans"] = [list(s) for s in self.spans]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ScoreResult":
        d = dict(d)
        d["spans"] = [tuple(s) for s in d["spans"]]
        d["words"] = [WordScore(**w) for w in d["words"]]
        return cls(**d)


@dataclass
class VQAResult:
    """VQAScore baseline: P("Yes") to 'Does this figure show "{prompt}"? Please answer yes or no.'"""
    prompt: str
    p_yes: float
    p_no: float
    p_yes_norm: float  # p_yes / (p_yes + p_no)
    model: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RerankResult:
    """Best-of-N: `order[0]` is the index of the best image; `scores` are aligned with the input order."""
    order: List[int]
    scores: List[float]
    results: list = field(default_factory=list)  # ScoreResult or VQAResult per input image

    @property
    def best(self) -> int:
        return self.order[0]

    @property
    def sorted_scores(self) -> List[float]:
        return [self.scores[i] for i in self.order]
