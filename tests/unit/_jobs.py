"""Loading a script of jobs/ as a module, for its tests."""
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_job(name: str):
    """The script as a module, with jobs/ on sys.path as when it runs (scripts import each other)."""
    if str(REPO / "jobs") not in sys.path:
        sys.path.insert(0, str(REPO / "jobs"))
    spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
