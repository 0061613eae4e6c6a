"""Helpers for tests that read the example workflows."""
import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def api_workflows():
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "workflows", "*_api.json"))):
        with open(path, encoding="utf-8") as f:
            yield os.path.basename(path), json.load(f)
