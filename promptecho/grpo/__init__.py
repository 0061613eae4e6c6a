"""LoRA GRPO engine: Flow-GRPO and AWM training of diffusers flow-matching pipelines with PromptEcho rewards.

Modules: config (GRPOConfig, presets), prompts (prompt sets), rewards (registry), sde (Flow-GRPO math),
awm (advantage-weighted flow matching), adapters (pipelines), trainer (GRPOSession), export (LoRA files), cli.
"""
from .config import ConfigError, GRPOConfig, preset  # noqa: F401
