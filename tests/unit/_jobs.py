"""Loading a script of jobs/ as a module, for its tests."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
