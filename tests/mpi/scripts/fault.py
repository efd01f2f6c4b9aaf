"""Under mpiexec: the real CLI, with rank 1 raising in step 3. Rank 0 then waits in an allreduce that
never completes unless the failure aborts the whole job."""
import sys

from lbfl_mpi import cli
from lbfl_mpi.trainer import Trainer

_orig = Trainer.train_step


def failing_step(self, step, timer):
    if self.comm.rank == 1 and step == 3:
        raise RuntimeError("injected failure on rank 1")
    return _orig(self, step, timer)


Trainer.train_step = failing_step
sys.exit(cli.main(sys.argv[1:]))
