"""Under mpiexec: the real CLI, with one rank's batch made NaN at one step (``--inject-rank R
--inject-step S``), so its loss and gradients are NaN; or, with ``--reference``, no NaN but the
optimizer step of step S not applied on any rank: what train.nonfinite='skip' must reproduce under BSP.
Both through the CLI's batch source (cli.main(batches=...))."""
import argparse
import sys

import torch

from lbfl_mpi import cli

ap = argparse.ArgumentParser()
ap.add_argument("--inject-rank", type=int, required=True)
ap.add_argument("--inject-step", type=int, required=True)
ap.add_argument("--reference", action="store_true")
args, rest = ap.parse_known_args()
held = {}


def batches(step, client):
    x, y = client.loader.next_batch()
    if args.reference:
        if step == args.inject_step:  # this step's update is not applied, on every rank
            held["step"] = client.opt.step
            client.opt.step = lambda *a, **k: None
        elif "step" in held:
            client.opt.step = held.pop("step")
    elif client.cid == args.inject_rank and step == args.inject_step:
        x = x * torch.tensor(float("nan"))
    return x, y


sys.exit(cli.main(rest, batches=batches))
