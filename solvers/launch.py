"""What an MPI launcher told this process, read from the environment alone (no MPI, no NumPy imported)."""
from __future__ import annotations

import os

# what the common launchers (MPICH/Intel MPI's hydra, Open MPI, MVAPICH, PMIx) put in each rank's environment
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _first_int(names) -> int | None:
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def launched_size() -> int:
    """The number of ranks an MPI launcher started (1 when not under one)."""
    return _first_int(SIZE_VARIABLES) or 1


def share_cores() -> int | None:
    """Under a launcher, give each rank of this host cores / local ranks threads (Numba and BLAS), unless
    the user chose a thread count: ranks x threads never exceeds the cores. Must run before NumPy and
    Numba are imported. Returns the threads per rank it set, or None."""
    if launched_size() <= 1 or any(name in os.environ for name in THREAD_VARIABLES):
        return None
    local = _first_int(LOCAL_SIZE_VARIABLES) or launched_size()
    threads = max(1, (os.cpu_count() or 1) // local)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    return threads
