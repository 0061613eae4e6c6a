"""pytest only: the repository root is a ComfyUI pack (an __init__.py with relative imports), so pytest would
collect the root as a package and import that __init__.py, which fails whenever the checkout folder is not a
valid Python name (e.g. `wt-ui`, `promptecho-main`). Collect the root as a plain directory instead. A conftest's
own hooks only see paths below it, so the hook is registered as a global plugin."""
import os

import pytest

_ROOT = os.path.dirname(os.path.abspath(__file__))


class _RootIsNotAPackage:
    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if str(path) == _ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    config.pluginmanager.register(_RootIsNotAPackage(), "promptecho-root-is-not-a-package")
