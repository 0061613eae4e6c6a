"""ComfyUI nodes: thin wrappers over the promptecho engine."""
from .loader import PromptEchoLoadVLM
from .rerank import PromptEchoBestOfN
from .score import PromptEchoScore, PromptEchoVQAScore

NODE_CLASS_MAPPINGS = {
    "PromptEchoLoadVLM": PromptEchoLoadVLM,
    "PromptEchoScore": PromptEchoScore,
    "PromptEchoBestOfN": PromptEchoBestOfN,
    "PromptEchoVQAScore": PromptEchoVQAScore,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PromptEchoLoadVLM": "PromptEcho Load VLM",
    "PromptEchoScore": "PromptEcho Score (token heatmap)",
    "PromptEchoBestOfN": "PromptEcho Best-of-N",
    "PromptEchoVQAScore": "PromptEcho VQAScore (baseline)",
}
