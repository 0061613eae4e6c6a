"""Test-environment shim for `make test-gradio-compat` (.venv-gradio4 only; never shipped in the product path).

Gradio 4.40 imports `huggingface_hub.HfFolder`, which huggingface_hub 1.x removed, while the engine's
transformers 5.x needs huggingface_hub >= 1.31: the two cannot be installed together unpatched. The
Makefile installs this module with a .pth line so the old Gradio imports; a Forge host that upgrades
huggingface_hub for transformers 5 needs the same alias."""
import huggingface_hub as _hub

if not hasattr(_hub, "HfFolder"):
    class HfFolder:
        @staticmethod
        def get_token():
            return _hub.get_token()

    _hub.HfFolder = HfFolder
