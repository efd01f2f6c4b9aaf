"""Under mpiexec: the real CLI, with rank 1 raising in step 3 (from its batch source). Rank 0 then waits
in an allreduce that never completes unless the failure aborts the whole job."""
import sys

from lbfl_mpi import cli


def failing_batches(step, client):
    if client.cid == 1 and step == 3:
        raise RuntimeError("injected failure on rank 1")
    return client.loader.next_batch()


sys.exit(cli.main(sys.argv[1:], batches=failing_batches))
