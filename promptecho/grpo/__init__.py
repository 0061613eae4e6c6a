"""LoRA GRPO for flow-matching text-to-image pipelines with PromptEcho as the reward (work in progress:
the math in `sde.py` is done and tested; sessions, adapters and export are not written yet)."""
