"""The federated layer end to end (fl.clients > 0), against references: with one client per rank it
computes what the one-rank-one-client FedAvg path computes; N clients give the same run on 1, 2 and
4 ranks, whichever rank hosts a client and however its state moves or spills."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import run_lbfl, tiny_run_args


def _model(out):
    return torch.load(out / "model.pt", map_location="cpu", weights_only=True)


def _fl_args(out, *extra):
    return tiny_run_args(out, "sync.mode='fedavg'", "sync.period=3", "train.steps=12", *extra)


def test_one_client_per_rank_is_the_fedavg_path(tmp_path):
    run_lbfl(_fl_args(tmp_path / "plain"), n=2)
    run_lbfl(_fl_args(tmp_path / "fl", "fl.clients=2"), n=2)
    assert_close(_model(tmp_path / "fl"), _model(tmp_path / "plain"), rtol=1e-5, atol=1e-6)
    for r in range(2):
        with open_rank_file(tmp_path / "plain" / f"rank{r:04d}.h5") as a, \
                open_rank_file(tmp_path / "fl" / f"rank{r:04d}.h5") as b:
            sa, sb = read_group(a, "steps"), read_group(b, "steps")
            assert_close(sb["loss"], sa["loss"], rtol=1e-5, atol=1e-6)
            assert (sb["synced"] == sa["synced"]).all() and (sb["batch_size"] == sa["batch_size"]).all()


@pytest.mark.parametrize("extra", [
    ("fl.algorithm='fedavg'",),
    ("fl.algorithm='scaffold'", "fl.server_optimizer='adam'", "fl.server_lr=0.01", "fl.state_budget_mb=0"),
    ("fl.algorithm='fedprox'", "fl.sampling='weighted'", "data.partition='dirichlet'", "compress.method='topk'",
     "compress.density=0.1", "fl.state_budget_mb=0", "train.momentum=0.9"),
], ids=["fedavg", "scaffold-adam-spill", "fedprox-weighted-dirichlet-topk-spill"])
def test_eight_clients_give_the_same_model_on_one_two_and_four_ranks(tmp_path, extra):
    args = ("fl.clients=8", "fl.clients_per_round=4", *extra)
    run_lbfl(_fl_args(tmp_path / "n1", *args), n=1)
    ref = _model(tmp_path / "n1")
    for n in (2, 4) if extra == ("fl.algorithm='fedavg'",) else (2,):
        run_lbfl(_fl_args(tmp_path / f"n{n}", *args), n=n)
        assert_close(_model(tmp_path / f"n{n}"), ref, rtol=1e-5, atol=1e-6)
    if "fl.state_budget_mb=0" in extra:  # every state was spilled to the run directory between rounds
        assert (tmp_path / "n2" / "clients").is_dir()


def test_the_algorithms_train_different_models(tmp_path):
    """The references above would hold for an algorithm that did nothing: each must change the run."""
    models = {}
    for alg in ("fedavg", "fedprox", "scaffold"):
        run_lbfl(_fl_args(tmp_path / alg, "fl.clients=4", f"fl.algorithm='{alg}'", "fl.prox_mu=1.0"), n=1)
        models[alg] = _model(tmp_path / alg)
    for a, b in (("fedavg", "fedprox"), ("fedavg", "scaffold")):
        diff = max(float((models[a][k].float() - models[b][k].float()).abs().max()) for k in models[a])
        assert diff > 1e-4, (a, b, diff)
    # each client's uplink: its dense float32 delta, and under SCAFFOLD also its control-variate delta
    n = sum(v.numel() for v in models["fedavg"].values())  # cnn: every entry is a trainable parameter
    for alg, per_entry in (("fedavg", 4), ("fedprox", 4), ("scaffold", 8)):
        with open_rank_file(tmp_path / alg / "rank0000.h5") as f:
            uplink = read_group(f, "clients")["uplink_bytes"]
        assert len(uplink) == 16 and set(int(u) for u in uplink) == {per_entry * n}, (alg, set(uplink))


# (overrides, the key the one line names, ranks): checks of the config alone run in one process (they
# stop before MPI starts, identically at any rank count); those that need the rank count or the
# model run under mpiexec -n 2, where every rank must stop with one line between them
BAD = [
    (["fl.clients=4", "fl.clients_per_round=5"], "fl.clients_per_round", 1),
    (["fl.clients=1"], "fl.clients", 2),                                        # fewer clients than ranks
    (["fl.clients=4", "fl.algorithm='scaffold'", "train.optimizer='adam'"], "train.optimizer", 1),
    (["fl.algorithm='fedprox'"], "fl.algorithm", 1),                             # needs fl.clients > 0
    (["fl.clients=4", "sync.mode='postlocal'"], "sync.mode", 1),
    (["fl.clients=4", "sync.mode='bsp'", "fl.algorithm='fedprox'"], "fl.algorithm", 1),   # rounds only
    (["fl.clients=4", "sync.mode='bsp'", "fl.clients_per_round=2"], "fl.clients_per_round", 1),
    (["fl.clients=4", "train.steps=13"], "train.steps", 1),
    (["fl.clients=4", "scaling.method='step'"], "scaling.method", 1),
    (["fl.clients=4", "fl.bn='local'"], "fl.bn", 2),                             # cnn has no BatchNorm
    (["fl.bn='local'"], "fl.bn", 1),                                             # needs fl.clients > 0
    (["fl.local_epochs=1"], "fl.local_epochs", 1),                               # needs fl.clients > 0
    (["fl.clients=4", "sync.mode='bsp'", "fl.local_epochs=1"], "fl.local_epochs", 1),     # rounds only
    (["fl.clients=4", "fl.local_epochs=-1"], "fl.local_epochs", 1),
]


@pytest.mark.parametrize("bad,named,ranks", BAD)
def test_bad_federated_input_exits_2_in_one_line_and_writes_nothing(tmp_path, bad, named, ranks):
    out = tmp_path / "run"
    p = run_lbfl(_fl_args(out, *bad), n=ranks, check=False, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert len(errors) == 1 and named in errors[0], p.stderr
    assert not out.exists()


def test_client_and_round_telemetry_follow_the_sample_and_the_placement(tmp_path):
    """Reference: sampling.sample_clients and place_balanced as the header of rounds.py says they are
    used; the samples of the clients' rows add up to the rounds' and the steps' rows."""
    from lbfl_mpi.fl.sampling import place_balanced, sample_clients

    out = tmp_path / "run"
    run_lbfl(_fl_args(out, "fl.clients=6", "fl.clients_per_round=4", "train.momentum=0.9"), n=2)
    ranks = []
    for r in range(2):
        with open_rank_file(out / f"rank{r:04d}.h5") as f:
            ranks.append((read_group(f, "clients"), read_group(f, "rounds"), read_group(f, "steps")))
            assert f["clients/t_train"].attrs["units"] == "s" and f["clients/bytes_moved"].attrs["units"] == "bytes"
    assert len(ranks[1][1].get("round", [])) == 0 and list(ranks[0][1]["round"]) == [0, 1, 2, 3]
    sizes = None
    host_before: dict[int, int] = {}
    for rnd in range(4):
        trained = {r: sorted(int(c) for c, rr in zip(ranks[r][0]["client"], ranks[r][0]["round"]) if rr == rnd)
                   for r in range(2)}
        sampled = sample_clients(6, 4, rnd, seed=0)
        assert sorted(trained[0] + trained[1]) == sampled
        if sizes is None:  # the digits partition over 6 clients: sizes as the run made them
            from lbfl_mpi.config import load_config
            from lbfl_mpi.data import load_dataset, partition_indices

            cfg = load_config(None, ["fl.clients=6", "sync.mode='fedavg'"])
            parts = partition_indices(load_dataset(cfg.data, 0).train_labels, 6, "iid", 0, 1, 0.5)
            sizes = [len(p) for p in parts]
        assert [trained[0], trained[1]] == place_balanced(sampled, sizes, 2)
        total = sum(int(s) for r in range(2) for s, rr in zip(ranks[r][0]["samples"], ranks[r][0]["round"])
                    if rr == rnd)
        assert total == int(ranks[0][1]["samples"][rnd]) == 4 * 3 * 8
        for r in range(2):
            rows = slice(rnd * 3, rnd * 3 + 3)
            assert (ranks[r][2]["batch_size"][rows] == 8 * len(trained[r])).all()
            for c, rr, moved in zip(ranks[r][0]["client"], ranks[r][0]["round"], ranks[r][0]["bytes_moved"]):
                if rr == rnd:  # a state travels exactly when its client changes rank
                    assert (moved > 0) == (host_before.get(int(c), r) != r), (rnd, int(c))
        for r in range(2):
            host_before.update({c: r for c in trained[r]})
    assert (ranks[0][0]["delta_norm"] > 0).all() and (ranks[0][1]["update_norm"] > 0).all()


def test_a_federated_run_resumed_from_its_checkpoint_is_the_uninterrupted_run(tmp_path):
    args = ("fl.clients=6", "fl.clients_per_round=4", "train.momentum=0.9", "fl.algorithm='scaffold'",
            "run.checkpoint_every=6")
    run_lbfl(_fl_args(tmp_path / "full", *args), n=2)
    run_lbfl(_fl_args(tmp_path / "cut", *args, "train.steps=6"), n=2)
    run_lbfl(_fl_args(tmp_path / "cut", *args, "run.resume=true"), n=2)
    assert_close(_model(tmp_path / "cut"), _model(tmp_path / "full"), rtol=0, atol=0)
    for r in range(2):
        with open_rank_file(tmp_path / "full" / f"rank{r:04d}.h5") as a, \
                open_rank_file(tmp_path / "cut" / f"rank{r:04d}.h5") as b:
            for group in ("steps", "clients"):
                ga, gb = read_group(a, group), read_group(b, group)
                for col in ("loss", "batch_size") if group == "steps" else ("client", "samples", "loss_last"):
                    assert_close(gb[col], ga[col], rtol=0, atol=0)


def test_throughput_placement_gives_an_emulated_slow_rank_fewer_clients_and_the_same_model(tmp_path):
    args = ("fl.clients=8", "train.steps=18", "hetero.slowdown=[1.0, 6.0]")
    run_lbfl(_fl_args(tmp_path / "bal", *args), n=2)
    run_lbfl(_fl_args(tmp_path / "thr", *args, "fl.placement='throughput'"), n=2)
    per_rank = {}
    for name in ("bal", "thr"):
        for r in range(2):
            with open_rank_file(tmp_path / name / f"rank{r:04d}.h5") as f:
                c = read_group(f, "clients")
                per_rank[name, r] = [int((c["round"] == k).sum()) for k in range(6)]
    assert per_rank["bal", 0] == per_rank["bal", 1] == [4] * 6
    assert per_rank["thr", 0][0] == 4 and all(n > 4 for n in per_rank["thr", 0][1:]), per_rank
    assert_close(_model(tmp_path / "thr"), _model(tmp_path / "bal"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("before,after", [(4, 2)])  # 2 -> 4 passes too; left out to keep the suite short
def test_a_federated_run_resumes_on_another_rank_count(tmp_path, before, after):
    """Preempted on `before` ranks, continued on `after`: the same sampled clients, the same model as
    the uninterrupted run up to the summation order; the larger job's extra rank files are kept."""
    args = ("fl.clients=8", "fl.clients_per_round=4", "train.momentum=0.9", "fl.algorithm='scaffold'",
            "run.checkpoint_every=6")
    run_lbfl(_fl_args(tmp_path / "full", *args), n=after)
    run_lbfl(_fl_args(tmp_path / "cut", *args, "train.steps=6"), n=before)
    p = run_lbfl(_fl_args(tmp_path / "cut", *args, "run.resume=true"), n=after)
    assert f"resuming the {before}-rank checkpoint of step 6 on {after} ranks" in p.stderr
    assert_close(_model(tmp_path / "cut"), _model(tmp_path / "full"), rtol=1e-5, atol=1e-6)
    assert sorted(f.name for f in (tmp_path / "cut").glob("rank*.h5")) == [f"rank{r:04d}.h5" for r in range(after)]
    if before > after:
        kept = sorted(f.name for f in (tmp_path / "cut" / "segments" / "step_00000006").glob("rank*.h5"))
        assert kept == [f"rank{r:04d}.h5" for r in range(after, before)]
    trained = {}
    for d in ("full", "cut"):
        rows = []
        for f in (tmp_path / d).glob("rank*.h5"):
            with open_rank_file(f) as h:
                c = read_group(h, "clients")
                rows += [(int(r), int(k)) for r, k in zip(c["round"], c["client"]) if r >= 2]
        trained[d] = sorted(rows)
    assert trained["cut"] == trained["full"]  # rounds after the resume trained the same clients
    summary = __import__("json").loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["world_size"] == after and summary["outcome"] == "completed"
