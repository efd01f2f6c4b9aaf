"""Start-up: a training run never imports torch._dynamo (2.4 s of a 2-core machine's start-up), and
parsing the command line, ``lbfl config`` and ``lbfl analyze`` import no torch at all, so that
``lbfl train`` installs its signal handlers before the 2-3 s torch import.

Runs the CLI in a fresh interpreter (the parent test process may have imported it already) and reads
``sys.modules`` after the run; benchmarks/bench_startup.py measures the time to the first step."""
import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from lbfl_mpi.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "dynamo": "torch._dynamo" in sys.modules, "sympy": "sympy" in sys.modules}))
"""
_NO_TORCH = """
import json, sys
from lbfl_mpi.cli import build_parser, main
build_parser()
parsed = "torch" in sys.modules
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torch_after_parser": parsed, "torch": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("extra", [
    [],
    ["--set", "train.optimizer=adam", "--set", "scaling.method=teacher", "--set", "scaling.small_batch=4",
     "--set", "scaling.teacher_steps=1", "--set", "scaling.teacher_pretrain_steps=1"],
], ids=["demo-sgd", "adam-teacher"])
def test_train_never_imports_dynamo(tmp_path, extra):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "train", "--config", "jobs/demo.toml", "--set", f"run.out_dir={tmp_path}/r",
         "--set", "train.steps=2", "--set", "train.eval_every=0", *extra],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {"rc": 0, "dynamo": False, "sympy": False}, out.stderr[-2000:]


def test_parser_config_and_analyze_import_no_torch(tmp_path):
    run = tmp_path / "r"
    made = subprocess.run([sys.executable, "-m", "lbfl_mpi", "train", "--config", "jobs/demo.toml", "--set",
                           f"run.out_dir={run}", "--set", "train.steps=2", "--set", "train.eval_every=0"],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    for argv in (["config"], ["analyze", str(run)], ["analyze", str(run), "--json"]):
        out = subprocess.run([sys.executable, "-c", _NO_TORCH, *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        probe = json.loads(out.stdout.strip().splitlines()[-1])
        assert probe == {"rc": 0, "torch_after_parser": False, "torch": False}, argv


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--set", "train.lr=abc"], "train.lr: expected float"),
    (["train", "--set", "model.name=nope"], "model.name='nope'"),
    (["plan", "--set", "train.batch_size=0"], "train.batch_size"),
])
def test_a_bad_value_stops_before_torch_and_mpi(argv, fragment):
    """Bad input found before anything is built is reported without importing torch or starting MPI
    (0.3 s instead of about 5 s); the line and exit code are those of the full path."""
    code = _NO_TORCH.replace('"torch": "torch" in sys.modules}', '"torch": "torch" in sys.modules, '
                             '"mpi": "mpi4py.MPI" in sys.modules}')
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {"rc": 2, "torch_after_parser": False, "torch": False, "mpi": False}, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lbfl: error:") and fragment in lines[0], out.stderr
