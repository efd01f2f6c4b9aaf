"""Command line: ``lbfl train | plan | analyze | config`` (``python -m lbfl_mpi`` is the same).

Exit codes: 0 success, 2 bad input (config, dataset, run directory, a batch that does not fit in
memory), 3 checkpointed on a preemption signal (requeue the job; ``run.resume=auto`` continues it),
4 stopped on a non-finite loss or gradient norm (``train.nonfinite='stop'``), 1 anything else. Under
MPI a bad input is agreed on by all ranks before anyone exits, and an unexpected exception on any rank
aborts the whole job, so no rank is ever left waiting.
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import INT_MAX, ConfigError, load_config, reference, validate_for_world

BAD_INPUT = 2


_BAD_INPUT = (("lbfl_mpi.data.datasets", "DataError"), ("lbfl_mpi.data.partition", "PartitionError"),
              ("lbfl_mpi.models.vision", "ModelError"), ("lbfl_mpi.comm.torch_plane", "BackendError"))


def _bad_input_types() -> tuple[type, ...]:
    """ConfigError and the error types of the modules that define the others, among those already
    imported: an exception of a class can only exist once its module is, and a run that stops on a
    bad value before building anything never imports torch (0.3 s instead of 5 s)."""
    loaded = (sys.modules.get(mod) for mod, _ in _BAD_INPUT)
    return (ConfigError, *(getattr(m, name) for m, (_, name) in zip(loaded, _BAD_INPUT) if m is not None))


def _fail(msg: str, rank: int = 0) -> None:
    if rank == 0:  # messages quote values from files and the environment: never raw escapes or newlines
        from .files import printable

        print(f"lbfl: error: {printable(msg)}", file=sys.stderr, flush=True)


def _agree_on_error(comm, error: str | None) -> bool:
    """Collective: True on every rank when any rank has an error; rank 0 prints the first one.

    The barrier after printing keeps the launcher from killing rank 0 (when another rank exits with
    code 2 first) before the message is out.
    """
    errors = comm.allgather_obj(error)
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if bad:
        r, e = bad[0]
        _fail(e if r == 0 else f"(rank {r}) {e}", comm.rank)
        comm.barrier()
    return bool(bad)


def _out_of_memory(e: BaseException) -> bool:
    """A failed allocation (CUDA or host), which a too-large batch causes."""
    if isinstance(e, (MemoryError, getattr(__import__("torch"), "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e))


def _on_every_rank(args, setup, finish, check_args=None, before_mpi=None) -> int:
    """Shared shape of the MPI commands: load the config, start MPI, run ``setup(cfg, comm)`` (which
    may reject bad input), agree on any rejection so every rank exits 2 together, then run
    ``finish(cfg, comm, state)``. An unexpected exception anywhere aborts the whole job."""
    cfg, error = None, None
    try:
        cfg = load_config(args.config, args.set or [])
        if check_args is not None:
            check_args(args)
        from .config.env import check_environment

        check_environment()  # LBFL_*, MASTER_*: a bad value is one line, not a traceback or a wrong result
        if before_mpi is not None:
            before_mpi(cfg)
    except (ConfigError, ValueError) as e:
        error = str(e)
    from .comm.launch import slurm_world_mismatch
    from .comm.world import Comm, abort_on_error

    comm = Comm()
    error = slurm_world_mismatch(comm.world_size) or error  # srun without PMIx: N singletons, one run dir
    with abort_on_error(comm):
        state = None
        if error is None:
            try:
                state = setup(cfg, comm)
            except _bad_input_types() as e:
                error = str(e)
        if _agree_on_error(comm, error):
            return BAD_INPUT
        return finish(cfg, comm, state)


def cmd_train(args) -> int:
    from .run.stopping import NONFINITE_EXIT, REQUEUE_EXIT, NonFiniteStop, Preempted, SignalWatch

    watch = {}

    def before_mpi(cfg):  # as early as possible: a signal during start-up is not lost
        watch["signals"] = SignalWatch(cfg.run.preempt_signals)

    def setup(cfg, comm):
        validate_for_world(cfg, comm.world_size)
        if cfg.fl.clients and cfg.sync.mode == "fedavg":  # federated rounds, clients decoupled from ranks (fl/)
            from .fl.build import build_federated_worker as build_worker
        else:
            from .train import build_worker

        # dataset, partition, model: no file is written yet
        return build_worker(cfg, comm, batches=getattr(args, "batches", None), signals=watch.get("signals"))

    def finish(cfg, comm, worker):
        from .comm.torch_plane import shutdown_torch_dist
        from .files import printable, quiet_io_unraisable
        if getattr(worker, "federation", None) is not None:
            from .fl.loop import train_federated as train
        else:
            from .train import train

        quiet_io_unraisable()  # a failed write is reported once below, not by every h5py object it leaves
        try:
            summary = train(worker)
        except ConfigError as e:  # run directory refused: raised identically on every rank
            _agree_on_error(comm, str(e))
            return BAD_INPUT
        except Preempted as e:  # agreed by every rank, after the checkpoint
            if comm.rank == 0:
                print(f"lbfl: {e}", file=sys.stderr, flush=True)
            return REQUEUE_EXIT
        except NonFiniteStop as e:
            _fail(str(e), comm.rank)
            return NONFINITE_EXIT
        except Exception as e:  # noqa: BLE001 - only a failed write or allocation is turned into one line
            from .files import io_failure, os_error_line

            if io_failure(e):  # a full disk, a quota, a file swapped for a directory: one line, exit 1
                print(f"lbfl: error: (rank {comm.rank}) cannot write the run: {os_error_line(e)}; files written "
                      "before stay, and run.resume=auto continues from the last complete checkpoint",
                      file=sys.stderr, flush=True)
                comm.abort(1)  # the others may wait in a collective; os._exit skips HDF5's cleanup
            if not _out_of_memory(e):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            print(f"lbfl: error: (rank {comm.rank}) out of memory with train.batch_size={cfg.train.batch_size}: "
                  f"{first}; lower the batch (`lbfl plan` reports the largest that fits)", file=sys.stderr, flush=True)
            comm.abort(BAD_INPUT)
        finally:
            shutdown_torch_dist()
            if "signals" in watch:
                watch["signals"].close()
        if summary is not None:
            held_out = "best_val_acc" in summary  # data.val_fraction: best by validation, test measured once
            best = (f"val acc {summary['final_val_acc']:.4f}, best {summary['best_val_acc']:.4f}" if held_out
                    else f"best {summary['best_test_acc']:.4f}")
            print(f"final test acc {summary['final_test_acc']:.4f}  {best} at step {summary['best_step']} (0-based)  "
                  f"{summary['samples_per_s']:.0f} samples/s ({summary['samples_per_s_no_eval']:.0f} without "
                  f"evaluation)  {summary['wall_time_s']:.1f} s, {summary['eval_time_s']:.1f} s of it evaluation"
                  f"  -> {printable(cfg.run.out_dir)}", flush=True)
            from .accuracy import accuracy_warning
            from .config import num_classes

            key = "val" if held_out else "test"
            warning = accuracy_warning(summary[f"final_{key}_acc"], summary[f"best_{key}_acc"], num_classes(cfg),
                                       summary["best_step"])
            if warning:  # rank 0 only: the others have no summary
                print(f"lbfl: warning: {warning}", file=sys.stderr, flush=True)
        return 0

    return _on_every_rank(args, setup, finish, before_mpi=before_mpi)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if not values or any(not 1 <= v <= INT_MAX for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be in [1, {INT_MAX}], got {text!r}")
    return values


def cmd_plan(args) -> int:
    def check_args(a):
        if a.memory_budget is not None and not 0 < a.memory_budget <= 1e6:  # nan fails too
            raise ConfigError(f"--memory-budget={a.memory_budget}: must be a finite number of GB in (0, 1e6]")
        for name in ("rounds", "repeats", "sync_repeats"):
            if not 1 <= getattr(a, name) <= 10_000:  # each is a loop over timed steps
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(a, name)}: must be in [1, 10000]")

    def setup(cfg, comm):
        from .plan.recommend import plan_rank

        comm.pick_device()
        # the trainer's data plane, so that t_sync is measured on it (collective; as in the trainer)
        comm.start_backend(cfg.dist.backend, cfg.dist.timeout_s)
        budget = args.memory_budget * 1e9 if args.memory_budget else None
        return plan_rank(cfg, comm, budget, args.probes, args.holdout, rounds=args.rounds, repeats=args.repeats,
                         sync_repeats=args.sync_repeats)

    def finish(cfg, comm, result):
        from .comm.torch_plane import shutdown_torch_dist

        shutdown_torch_dist()
        results = comm.allgather_obj(result)
        if comm.rank == 0:
            for warning in (w for r in results for w in r.get("warnings", [])):
                print(f"lbfl: warning: {warning}", file=sys.stderr, flush=True)
            if args.json:
                from .files import dumps_strict

                print(dumps_strict(results, indent=2))
            else:
                from .plan.recommend import format_plan

                print("\n\n".join(format_plan(r) for r in results))
        return 0

    return _on_every_rank(args, setup, finish, check_args)


def cmd_analyze(args) -> int:
    from .analysis import analyze_main

    return analyze_main(args.run_dirs, plots=args.plots, as_json=args.json, trace=args.trace)


def cmd_config_help(args) -> int:
    from .config.docs import config_template
    from .config.fields import toml_value

    if getattr(args, "toml", False):
        print(config_template(), end="")
        return 0

    for key, typ, default, help_ in reference():  # defaults as TOML: what --set takes back
        print(f"{key:28s} {typ:6s} {toml_value(default):24s} {help_}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lbfl", description="MPI federated / large-batch trainer")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train; under mpirun/srun every rank is one client")
    t.add_argument("--config", help="TOML experiment file (defaults apply without it)")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable); values are TOML: 0.1, true, [1, 2], word")
    t.set_defaults(func=cmd_train)
    pl = sub.add_parser("plan", help="fit memory (Eq. 3) and compute models on each rank's device, measure "
                                      "t_sync, recommend a batch (throughput knee and Eq. 2 epoch-time optimum)")
    pl.add_argument("--config", help="TOML experiment file (model, data shape, optimizer)")
    pl.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    pl.add_argument("--memory-budget", type=float, metavar="GB",
                    help="memory per device for the largest permissible batch (default: the GPU's memory)")
    pl.add_argument("--probes", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64],
                    help="probe batch sizes (default 1,2,4,8,16,32,64)")
    pl.add_argument("--holdout", type=_int_list, default=[12, 24, 48],
                    help="held-out batch sizes to check (default 12,24,48)")
    pl.add_argument("--rounds", type=int, default=3,
                    help="timing rounds over all batch sizes, interleaved; the median is kept (default 3)")
    pl.add_argument("--repeats", type=int, default=3, help="timed steps per batch size and round (default 3)")
    pl.add_argument("--sync-repeats", type=int, default=5,
                    help="timed synchronisations for t_sync after 2 warm-up ones; the median is kept (default 5)")
    pl.add_argument("--json", action="store_true", help="print JSON instead of tables")
    pl.set_defaults(func=cmd_plan)
    a = sub.add_parser("analyze", help="summarise run directories")
    a.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="a run directory, or a directory of them (each run up to 3 levels below it)")
    a.add_argument("--plots", metavar="DIR", help="write PNG charts to DIR")
    a.add_argument("--json", action="store_true", help="print JSON instead of tables")
    a.add_argument("--trace", metavar="FILE.json",
                   help="also write one run's timeline as a Chrome/Perfetto trace (ui.perfetto.dev, chrome://tracing)")
    a.set_defaults(func=cmd_analyze)
    c = sub.add_parser("config", help="list every config key with its default and meaning")
    c.add_argument("--toml", action="store_true",
                   help="print a complete experiment file instead: every key at its default, with its help")
    c.set_defaults(func=cmd_config_help)
    from .cli_data import add_data_parser

    add_data_parser(sub)
    return p


def main(argv: list[str] | None = None, batches=None) -> int:
    """``batches``: a ``(step, client) -> (x, y)`` batch source for ``lbfl train`` in place of the
    client's loader (train/build.py), for tests that need the real command with injected data."""
    args = build_parser().parse_args(argv)
    args.batches = batches
    return args.func(args)


def entry() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `lbfl analyze --json | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except OSError as e:  # the net under every command: a file that cannot be read or written is one line
        from .files import os_error_line

        print(f"lbfl: error: {os_error_line(e)}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)
