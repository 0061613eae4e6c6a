import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from the command line
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .cli import main  # noqa: E402

sys.exit(main())
