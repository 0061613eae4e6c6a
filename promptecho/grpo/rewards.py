"""Reward registry: every reward is fn(images: list[PIL.Image], prompts: list[str]) -> list[float].

Built-ins: "promptecho" (default: -CE of the prompt under a frozen VLM), "vqascore" (P(yes) of the same VLM),
"shapes_oracle" (ShapesWorld rule-based checker; for evaluation). Weighted combinations: "promptecho:1+vqascore:0.5".
VLM-based rewards load their model once (promptecho.vlm.load_vlm caches it) and it stays frozen.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

RewardFn = Callable[[list, List[str]], List[float]]


class RewardError(ValueError):
    """Unknown reward name or malformed combination."""


_FACTORIES: Dict[str, Callable[..., RewardFn]] = {}


def register(name: str):
    """Register a factory `factory(model_path=None, **kw) -> RewardFn` under `name`."""
    def deco(factory):
        _FACTORIES[name] = factory
        return factory
    return deco


def available() -> List[str]:
    return sorted(_FACTORIES)


def _vlm(model_path: Optional[str], device: str):
    from ..vlm import load_vlm
    if not model_path:
        from ..shapes import default_vlm_path
        model_path = default_vlm_path()
    vlm = load_vlm(model_path, dtype="fp32" if device == "cpu" else "auto", device=device)
    vlm.model.requires_grad_(False)
    vlm.model.eval()
    return vlm


@register("promptecho")
def promptecho_reward(model_path: Optional[str] = None, device: str = "cpu", batch_size: int = 16, **score_kw) -> RewardFn:
    vlm = _vlm(model_path, device)

    def fn(images, prompts):
        return [r.reward for r in vlm.score(images, list(prompts), batch_size=batch_size, **score_kw)]
    fn.vlm = vlm
    return fn


@register("vqascore")
def vqascore_reward(model_path: Optional[str] = None, device: str = "cpu", batch_size: int = 16, **_) -> RewardFn:
    vlm = _vlm(model_path, device)

    def fn(images, prompts):
        return [r.p_yes_norm for r in vlm.vqascore(images, list(prompts), batch_size=batch_size)]
    fn.vlm = vlm
    return fn


@register("shapes_oracle")
def shapes_oracle_reward(**_) -> RewardFn:
    from ..shapes.oracle import oracle_reward
    return oracle_reward


def combine(weighted: Dict[str, RewardFn], weights: Dict[str, float]) -> RewardFn:
    def fn(images, prompts):
        total = [0.0] * len(images)
        for name, f in weighted.items():
            vals = f(images, prompts)
            total = [t + weights[name] * float(v) for t, v in zip(total, vals)]
        return total
    return fn


def parse_spec(spec: str) -> Dict[str, float]:
    """"promptecho" -> {promptecho: 1}; "promptecho:1+vqascore:0.5" -> both with weights."""
    out: Dict[str, float] = {}
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            raise RewardError(f"empty term in reward spec {spec!r}")
        name, _, w = part.partition(":")
        name = name.strip()
        if name not in _FACTORIES:
            raise RewardError(f"unknown reward {name!r}; available: {', '.join(available())}")
        try:
            out[name] = float(w) if w else 1.0
        except ValueError:
            raise RewardError(f"weight of {name!r} must be a number, got {w!r}") from None
    return out


def build_reward(spec: str = "promptecho", model_path: Optional[str] = None, device: str = "cpu",
                 custom: Optional[Dict[str, RewardFn]] = None) -> RewardFn:
    """Build a reward function from a spec; `custom` maps extra names to ready functions (tests, plugins)."""
    custom = custom or {}
    if spec in custom:
        return custom[spec]
    weights = {}
    for part in spec.split("+"):
        name, _, w = part.strip().partition(":")
        if name in custom:
            weights[name] = float(w) if w else 1.0
    rest = "+".join(p for p in spec.split("+") if p.strip().partition(":")[0] not in custom)
    if rest:
        weights.update(parse_spec(rest))
    fns = {n: custom[n] if n in custom else _FACTORIES[n](model_path=model_path, device=device) for n in weights}
    if len(fns) == 1 and next(iter(weights.values())) == 1.0:
        return next(iter(fns.values()))
    return combine(fns, weights)
