"""The --plots charts, inspected as matplotlib figures before they are written: the share of steps
per scale factor as bars (closed form), axis labels in every panel, no text outside the figure,
legend labels at most LABEL_CHARS long, "error bars" only with 2 or more seeds, accuracy against
samples and bytes from the cumulative sums, the per-rank time breakdown summing to the wall time,
each rank's batch size over the steps, and the mechanism readings (train accuracy, sharpness) as
logged, one colour per arm."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lbfl_mpi.analysis import plots as plots_module
from lbfl_mpi.analysis import plots_cost, plots_readings, read_run
from lbfl_mpi.analysis.batch import batch_series
from lbfl_mpi.analysis.plot_layout import LABEL_CHARS, shorten
from lbfl_mpi.analysis.plots import factor_shares, write_plots

from ._fake_runs import STEPS, fake_run

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")
LONG = "a_run_name_that_goes_on_and_on_" * 6


@pytest.fixture
def figures(monkeypatch):
    """The figures the charts make, by file name, kept instead of written."""
    got = {}

    def keep(fig, path: Path, plt):
        got[Path(path).name] = fig
        return path

    monkeypatch.setattr(plots_module, "save", keep)
    monkeypatch.setattr(plots_cost, "save", keep)
    monkeypatch.setattr(plots_readings, "save", keep)
    yield got
    plt.close("all")


def _set(path: Path, group: str, **cols):
    for rank_file in sorted(path.glob("rank*.h5")):
        with h5py.File(rank_file, "r+") as f:
            for name, data in cols.items():
                if name in f[group]:
                    del f[group][name]
                f[group].create_dataset(name, data=np.asarray(data))


def test_factor_shares_closed_form():
    values, shares, discrete = factor_shares(np.array([1.0, 4.0, 1.0, 1.0, np.nan]))
    assert discrete and values.tolist() == [1.0, 4.0] and shares.tolist() == [0.75, 0.25]
    values, shares, discrete = factor_shares(np.linspace(0.5, 2.0, 100), bins=20)
    assert not discrete and values.size == 20 and shares.sum() == pytest.approx(1.0)
    assert shares.tolist() == pytest.approx([0.05] * 20)


def _outside(fig) -> list[str]:
    """What is drawn beyond the figure's pixels: each axes with its title, labels and tick labels (its
    tight box), the figure's legends and its title."""
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    parts = [(ax.get_title() or "axes", ax.get_tightbbox(renderer)) for ax in fig.axes if ax.get_visible()]
    parts += [("legend", leg.get_window_extent(renderer)) for leg in fig.legends]
    if fig._suptitle is not None:
        parts.append((fig._suptitle.get_text(), fig._suptitle.get_window_extent(renderer)))
    return [name for name, e in parts
            if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1]


def test_every_chart_keeps_its_text_inside_and_labels_its_axes(tmp_path, figures):
    scaled = fake_run(tmp_path / "scaled", final=0.8, name=LONG, scaling={"method": "step", "factor": 4.0},
                      train={"batch_size": 16})
    _set(scaled, "steps", scale_factor=[1.0, 4.0, 1.0, 1.0])
    dyn = fake_run(tmp_path / "dyn", final=0.7, name="dyn", batching={"mode": "dynamic"}, train={"batch_size": 32})
    runs = [read_run(p) for p in (scaled, dyn)]
    written = write_plots(runs, tmp_path / "plots")
    assert sorted(p.name for p in written) == sorted(figures) == sorted([
        "convergence.png", "grad_change.png", "scale_factors.png", "grad_norm_early.png", "accuracy_vs_batch.png",
        "accuracy_vs_samples.png", "accuracy_vs_bytes.png", "time_breakdown.png", "batch_allocation.png"])
    for name, fig in figures.items():
        assert _outside(fig) == [], name
        for ax in fig.axes:
            if ax.get_visible():
                assert ax.get_xlabel(), (name, ax.get_title())
        for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]:
            assert all(len(t.get_text()) <= LABEL_CHARS for t in leg.get_texts()), name
    grad = [ax for ax in figures["grad_change.png"].axes if ax.get_visible()]
    assert len(grad) == 2 and grad[0].get_ylabel() == "delta (Eq. 8)"
    # scale factors: one bar per distinct factor, its height the share of steps (3 of 4 steps at 1)
    (bars,) = [ax for ax in figures["scale_factors.png"].axes if ax.get_visible()]
    assert [p.get_height() for p in bars.patches] == [0.75, 0.25]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["1", "4"] and bars.get_ylabel() == "share of steps"


def _batch_chart(runs, out):
    return plots_module._accuracy_vs_batch(batch_series(runs), out, plt)


def test_error_bars_only_with_two_or_more_seeds(tmp_path, figures):
    one = [read_run(fake_run(tmp_path / f"s0_b{b}", final=0.9, train={"batch_size": b})) for b in (16, 32)]
    _batch_chart(one, tmp_path)
    ax = figures["accuracy_vs_batch.png"].axes[0]
    assert "error bars" not in ax.get_title() and "one seed" in ax.get_title() and not ax.containers
    two = one + [read_run(fake_run(tmp_path / f"s1_b{b}", final=0.8, seed=1, train={"batch_size": b}))
                 for b in (16, 32)]
    _batch_chart(two, tmp_path)
    ax = figures["accuracy_vs_batch.png"].axes[0]
    assert "error bars: std over seeds" in ax.get_title()
    (bars,) = ax.containers  # one errorbar series; its bars span mean +- std of 0.9 and 0.8
    segs = bars.lines[2][0].get_segments()
    sd = np.std([0.9, 0.8], ddof=1)
    np.testing.assert_allclose([s[:, 1] for s in segs], [[0.85 - sd, 0.85 + sd]] * 2)


def test_accuracy_against_cumulative_samples_and_bytes(tmp_path, figures):
    run = read_run(fake_run(tmp_path / "r", final=0.9, world_size=2, bytes_per_step=400))  # evals after 0, 2, 3
    plots_cost.cost_plots([run], tmp_path, plt)
    b = run.ranks[0].steps["batch_size"][0]
    (line,) = figures["accuracy_vs_samples.png"].axes[0].get_lines()
    assert line.get_xdata().tolist() == [2 * b * k for k in (1, 3, 4)]
    assert line.get_ydata().tolist() == pytest.approx([0.8, 0.9, 0.9])
    (line,) = figures["accuracy_vs_bytes.png"].axes[0].get_lines()
    assert line.get_xdata().tolist() == [2 * 400 * k for k in (1, 3, 4)]


def test_time_breakdown_stacks_to_the_wall_time(tmp_path, figures):
    run = fake_run(tmp_path / "r", final=0.9, world_size=2, wall=0.5)
    _set(run, "eval", t_eval=[0.01, 0.02, 0.03])
    plots_cost._time_breakdown([read_run(run)], tmp_path, plt)
    (ax,) = [a for a in figures["time_breakdown.png"].axes if a.get_visible()]
    # 6 parts x 2 ranks, stacked part by part
    heights = np.array([p.get_height() for p in ax.patches]).reshape(len(plots_cost.PARTS), 2)
    want = {"compute": STEPS * 2e-3, "data": STEPS * 1e-3, "sync": STEPS * 1e-3, "straggle": 0.0, "eval": 0.06}
    for i, part in enumerate(plots_cost.PARTS[:-1]):
        assert heights[i].tolist() == pytest.approx([want[part]] * 2), part
    assert heights.sum(axis=0).tolist() == pytest.approx([0.5, 0.5])  # other = the rest of the wall time


def test_batch_allocation_lines_are_each_ranks_batch(tmp_path, figures):
    run = fake_run(tmp_path / "r", final=0.9, world_size=2, batching={"mode": "dynamic"})
    sizes = {0: [8, 8, 12, 12], 1: [8, 8, 4, 4]}
    for rank, b in sizes.items():
        with h5py.File(run / f"rank{rank:04d}.h5", "r+") as f:
            f["steps/batch_size"][:] = b
    plots_cost._batch_allocation([read_run(run)], tmp_path, plt)
    lines = figures["batch_allocation.png"].axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["rank 0", "rank 1", "global batch"]
    assert [ln.get_ydata().tolist() for ln in lines] == [sizes[0], sizes[1], [16] * 4]
    assert lines[0].get_xdata().tolist() == [1, 2, 3, 4]  # steps done


def test_no_batch_allocation_chart_without_changing_batches(tmp_path, figures):
    assert plots_cost._batch_allocation([read_run(fake_run(tmp_path / "r", final=0.9))], tmp_path, plt) is None
    assert figures == {}


def test_shorten_keeps_only_what_differs():
    labels = ["none [data.partition=iid, train.lr=0.1], lr 0.05", "none [data.partition=labels, train.lr=0.1], lr 0.05"]
    assert shorten(labels) == ["partition=iid", "partition=labels"]
    long = [f"{LONG} {i}" for i in range(2)]
    assert all(len(x) <= LABEL_CHARS for x in shorten(long))


def test_readings_chart_draws_the_logged_train_accuracy_and_sharpness(tmp_path, figures):
    assert plots_readings.readings_plot([read_run(fake_run(tmp_path / "plain", final=0.9))], tmp_path, plt) is None
    assert figures == {}
    logged = {}
    for name, seed, top in (("b64", 1, 0.99), ("b64", 2, 0.98), ("b2048", 1, 1.0)):
        run = fake_run(tmp_path / f"{name}_s{seed}", final=0.9, name=name, seed=seed)
        train_acc, sharp = [0.5, 0.8, top], [400.0, np.nan, 40.0 * seed]  # an evaluation without sharpness
        _set(run, "eval", train_acc=train_acc, sharpness=sharp, val_acc=[0.4, 0.7, 0.85])
        logged[run.name] = (train_acc, sharp)
    runs = [read_run(tmp_path / d) for d in logged]
    assert plots_readings.readings_plot(runs, tmp_path, plt) is not None
    fig = figures["readings.png"]
    assert _outside(fig) == []
    acc, sharp = fig.axes[:2]
    assert acc.get_xlabel() == sharp.get_xlabel() == "steps done" and sharp.get_yscale() == "log"
    assert "validation accuracy (dashed)" in acc.get_title()
    lines = acc.get_lines()  # per run: train accuracy (solid), then validation (dashed)
    assert [ln.get_ydata().tolist() for ln in lines[0::2]] == [logged[d][0] for d in logged]
    assert [ln.get_linestyle() for ln in lines[:2]] == ["-", "--"]
    assert all(ln.get_ydata().tolist() == [0.4, 0.7, 0.85] for ln in lines[1::2])
    assert lines[0].get_xdata().tolist() == [1, 3, 4]  # steps done
    # sharpness: the NaN evaluation left out
    assert [ln.get_ydata().tolist() for ln in sharp.get_lines()] == [[400.0, 40.0], [400.0, 80.0], [400.0, 40.0]]
    assert [ln.get_xdata().tolist() for ln in sharp.get_lines()][0] == [1, 4]
    # one colour per arm, the legend names each arm once with its count
    colours = [ln.get_color() for ln in sharp.get_lines()]
    assert colours[0] == colours[1] != colours[2]
    (leg,) = fig.legends
    assert [t.get_text() for t in leg.get_texts()] == ["b64 (2 runs)", "b2048 (1 run)"]
    assert acc.get_xscale() == "linear"
    _set(tmp_path / "b64_s1", "eval", step=[0, 20, 30])  # last evaluation 31 steps against 4: a log axis
    figures.clear()
    plots_readings.readings_plot([read_run(tmp_path / d) for d in logged], tmp_path, plt)
    assert [ax.get_xscale() for ax in figures["readings.png"].axes[:2]] == ["log", "log"]


def test_readings_of_runs_evaluated_once_are_points_and_missing_sharpness_is_named(tmp_path, figures):
    """train.eval_every = 0 (jobs/protocol/fig3.toml): one evaluation per run, which a line without a
    marker does not draw; no run measured sharpness, which the right panel says."""
    run = fake_run(tmp_path / "once", final=0.86, name="once")
    _set(run, "eval", step=[99], test_acc=[0.86], test_loss=[0.4], train_acc=[0.88], sharpness=[np.nan])
    assert plots_readings.readings_plot([read_run(run)], tmp_path, plt) is not None
    acc, sharp = figures["readings.png"].axes[:2]
    train, test = acc.get_lines()
    assert (train.get_xdata().tolist(), train.get_ydata().tolist(), train.get_marker()) == ([100], [0.88], "o")
    assert (test.get_xdata().tolist(), test.get_ydata().tolist(), test.get_marker()) == ([100], [0.86], "x")
    assert "test accuracy (dashed)" in acc.get_title()
    assert sharp.get_lines() == [] and [t.get_text() for t in sharp.texts] == [
        "not measured (train.eval_sharpness_iters = 0)"]


def test_accuracy_vs_batch_draws_train_accuracy_beside_test_where_logged(tmp_path, figures):
    """Fig. 3 again: the probe's last train accuracy, mean over seeds, dotted in the series' colour."""
    runs, train = [], {(16, 0): 0.95, (16, 1): 0.93, (32, 0): 0.99, (32, 1): 0.97}
    for (b, seed), top in train.items():
        d = fake_run(tmp_path / f"s{seed}_b{b}", final=0.9 - 0.1 * seed, seed=seed, train={"batch_size": b})
        _set(d, "eval", train_acc=[0.5, 0.8, top])
        runs.append(read_run(d))
    series = batch_series(runs)
    (s,) = series
    for p in s.points:
        want = [train[(p["global_batch"] // 2, k)] for k in (0, 1)]  # 2 ranks: B = 2 b
        torch.testing.assert_close((p["final_train_acc_mean"], p["final_train_acc_std"]),
                                   (float(np.mean(want)), float(np.std(want, ddof=1))))
    _batch_chart(runs, tmp_path)
    ax = figures["accuracy_vs_batch.png"].axes[0]
    assert "dotted, hollow: train accuracy" in ax.get_title() and ax.get_ylabel() == "final accuracy"
    test_line, train_line = ax.containers[0].lines[0], ax.get_lines()[-1]
    assert train_line.get_linestyle() == ":" and train_line.get_color() == test_line.get_color()
    np.testing.assert_allclose(train_line.get_ydata(), [0.94, 0.98])
    without = [read_run(fake_run(tmp_path / f"plain_b{b}", final=0.9, train={"batch_size": b})) for b in (16, 32)]
    figures.clear()
    _batch_chart(without, tmp_path)
    ax = figures["accuracy_vs_batch.png"].axes[0]
    assert "train accuracy" not in ax.get_title() and [ln.get_linestyle() for ln in ax.get_lines()] == ["-"]
