"""ComfyUI entry point of the PromptEcho node pack.

ComfyUI imports this folder as a package. The engine (`promptecho/`) is imported absolutely, so the
pack folder goes on sys.path; the node modules are imported relatively because ComfyUI has a
top-level module called `nodes` of its own.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
