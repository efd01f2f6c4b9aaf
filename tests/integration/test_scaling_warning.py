"""The start-up warning for Adam with a gradient-scaling method, as the CLI prints it."""


def test_adam_warning_is_printed_once_at_start_up(tmp_path):
    """Tyagi 2025 Eq. 6 U(X) under Adam: the CLI prints the one-line warning on rank 0 (the house's
    "lbfl: warning: ..." lines, run/rundir.py), and not with SGD."""
    from ..conftest import run_lbfl, tiny_run_args

    common = ["scaling.method=step", "train.steps=1", "train.eval_every=0"]
    adam = run_lbfl(tiny_run_args(tmp_path / "adam", *common, "train.optimizer=adam"))
    def start_up(p):  # a 1-step run may also end near chance: that warning (lbfl_mpi/accuracy.py) is not counted
        return [ln for ln in p.stderr.splitlines()
                if ln.startswith("lbfl: warning:") and not ln.startswith("lbfl: warning: final test accuracy")]

    lines = start_up(adam)
    assert len(lines) == 1 and "train.optimizer='adam'" in lines[0] and "transients" in lines[0], adam.stderr
    sgd = run_lbfl(tiny_run_args(tmp_path / "sgd", *common))
    assert start_up(sgd) == [], sgd.stderr
