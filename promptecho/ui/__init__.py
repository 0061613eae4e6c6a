"""Launcher only: `python -m promptecho.ui` starts the Gradio app that lives in the repository's ui/ folder.
The engine never imports gradio; this package imports nothing until main() runs."""
import os
import sys


def main(argv=None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.insert(0, root)
    from ui.app import main as ui_main

    return ui_main(argv)
