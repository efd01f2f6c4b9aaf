"""The trainer's warnings as a 2-rank job prints them: each start-up trap once, from rank 0 only,
before the first step, and the end-of-run accuracy warning after the summary line; `lbfl analyze`
of the run repeats the accuracy warning. The rules themselves are checked at their boundaries, both
ways, in tests/unit/test_start_warnings.py; the Quick start test checks that good runs print none."""
import json

from ..conftest import run_lbfl, tiny_run_args


def test_start_up_traps_and_a_near_chance_end_warn_once_on_rank_0(tmp_path):
    out = tmp_path / "run"
    # one label per client on 2 clients: 8 of 10 classes unseen; batch 200 > ~145 samples per client;
    # FedAvg with H = 100 > 4 steps: a signal cannot be honoured; lr 5 ends at chance
    p = run_lbfl(tiny_run_args(out, "data.partition=labels", "data.labels_per_client=1", "train.batch_size=200",
                               "sync.mode=fedavg", "sync.period=100", "train.steps=4", "train.eval_every=0",
                               "train.lr=5", "train.momentum=0.9", "train.nonfinite=ignore"), n=2, timeout=180)
    lines = p.stderr.splitlines()
    warnings = [ln for ln in lines if ln.startswith("lbfl: warning:")]
    assert len(warnings) == 4, p.stderr
    unseen, small, preempt, acc = warnings
    assert unseen.startswith("lbfl: warning: data.partition='labels' on 2 clients leaves 8 of 10 classes held by "
                             "no client (classes ") and "test accuracy is capped at 0.2" in unseen
    assert small.startswith("lbfl: warning: data.partition='labels' leaves 2 clients with fewer training samples "
                            "than a batch (samples < batch: client 0: ") and ", client 1: " in small
    assert preempt.startswith("lbfl: warning: sync.mode='fedavg' with sync.period=100, run.preempt_check_every=0, "
                              "run.checkpoint_every=0 for train.steps=4: a preemption signal (SIGUSR1, SIGTERM)")
    first_step = next(i for i, ln in enumerate(lines) if ln.startswith("step 1/4"))
    assert all(lines.index(w) < first_step for w in (unseen, small, preempt))  # before training
    summary = json.loads((out / "summary.json").read_text())
    assert acc == (f"lbfl: warning: final test accuracy {summary['final_test_acc']:.4f} is near chance "
                   "(1/10 = 0.1000): the model did not learn; check train.lr, the partition and the classes the "
                   "clients hold")
    a = run_lbfl(["analyze", str(out), "--json"])
    assert json.loads(a.stdout)[0]["accuracy_warning"] == acc.removeprefix("lbfl: warning: ")
