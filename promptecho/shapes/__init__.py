"""ShapesWorld: a procedural world with computable ground truth, and the project's embedded default models.

- `world`: scene grammar, atoms, dense captions, corruptions, train/eval splits
- `render`: deterministic anti-aliased renderer
- `oracle`: rule-based checker (pixels -> objects -> atoms satisfied)
- `train_vlm` / `train_generator`: reproducible training of the tiny reward VLM and generator
- `eval`: reward discrimination, best-of-N and rank-correlation table
"""
import os

_MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")


def default_vlm_path() -> str:
    """Folder of the committed ShapesWorld VLM (LLaVA architecture, loads with promptecho.load_vlm)."""
    return os.path.join(_MODELS, "vlm")


def default_generator_path() -> str:
    """Folder of the committed ShapesWorld text-to-image pipeline (diffusers format)."""
    return os.path.join(_MODELS, "generator")


def has_default_vlm() -> bool:
    return os.path.isfile(os.path.join(default_vlm_path(), "config.json"))


def has_default_generator() -> bool:
    return os.path.isfile(os.path.join(default_generator_path(), "model_index.json"))
