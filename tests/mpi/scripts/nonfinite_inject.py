"""Under mpiexec: the real CLI, with one rank's loss made NaN at one step (``--inject-rank R
--inject-step S``), or, with ``--reference``, no NaN but the optimizer step of step S not applied on
any rank: what train.nonfinite='skip' must reproduce under BSP."""
import argparse
import sys

import torch

from lbfl_mpi import cli
from lbfl_mpi.trainer import Trainer

ap = argparse.ArgumentParser()
ap.add_argument("--inject-rank", type=int, required=True)
ap.add_argument("--inject-step", type=int, required=True)
ap.add_argument("--reference", action="store_true")
args, rest = ap.parse_known_args()

_step, _loss = Trainer.train_step, Trainer._loss


def train_step(self, step, timer):
    self._now = step
    if args.reference and step == args.inject_step and not hasattr(self, "_orig_opt_step"):
        self._orig_opt_step = self.opt.step
        self.opt.step = lambda *a, **k: None
    elif args.reference and hasattr(self, "_orig_opt_step"):
        self.opt.step = self._orig_opt_step
        del self._orig_opt_step
    return _step(self, step, timer)


def loss(self, x, y):
    out = _loss(self, x, y)
    if not args.reference and self.comm.rank == args.inject_rank and self._now == args.inject_step:
        out = out * torch.tensor(float("nan"))
    return out


Trainer.train_step, Trainer._loss = train_step, loss
sys.exit(cli.main(rest))
