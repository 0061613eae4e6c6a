"""PromptEcho Gradio UI (Score, Best-of-N, Train tabs). Standalone: `python -m promptecho.ui`;
WebUI hosts: scripts/promptecho_tab.py. Importing `ui` does not import gradio; `ui.app` does."""
