"""The digits demo trained data-parallel: every rank trains on its share of each batch.

Same data, network and settings as examples/digits.py, with ``distributed=comm`` in ``fit``:
each of the N ranks takes 32 rows of every global batch of 32 N, the ranks' gradients are summed
before every update, and all ranks end with the same weights. Rank 0 alone prints and saves the
plot. Without mpiexec (or without mpi4py) it runs as a single rank.

    mpiexec -n 2 python examples/distributed_digits.py --backend numpy
    pip install "bpgpu[mpi]"        # mpi4py and the MPICH wheel, which brings mpiexec
"""

import os
import time

import numpy as np

import bpgpu
from bpgpu.optimizers import Adam

from _common import parse_args, save_loss_curve
from digits import load_digits_split


def communicator():
    """This process's communicator, or None (one process) when mpi4py is missing."""
    try:
        return bpgpu.distributed.init()
    except bpgpu.DistributedUnavailableError as exc:
        print(f"training in one process: {exc}")
        return None


def main():
    args = parse_args(__doc__.splitlines()[0], epochs=30)
    comm = communicator()
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    X_train, X_test, y_train, y_test = load_digits_split(args.seed)
    net = bpgpu.Network.from_sizes([64, 128, 64, 10], activation="relu", loss="cross_entropy",
                                   optimizer=Adam(lr=1e-3), backend=args.backend, seed=args.seed)
    if rank == 0:
        print(f"backend: {net.backend.name} ({net.backend.reason})")
        print(f"ranks: {size}, batch 32 per rank, global batch {32 * size}")
        if comm is not None:
            print(f"gradients summed by: {comm.transport_for(net.backend).reason}")
    start = time.perf_counter()
    history = net.fit(X_train, y_train, epochs=args.epochs, batch_size=32,
                      validation_data=(X_test, y_test), verbose=2, distributed=comm)
    seconds = time.perf_counter() - start
    # every rank holds the same weights: compare each rank's checksum with rank 0's
    if comm is not None and comm.size > 1:
        mine = np.array([sum(np.sum(w, dtype=np.float64) for w in net.get_weights())])
        rank0 = mine.copy()
        comm.broadcast_array(rank0)
        differs = comm.any(mine[0] != rank0[0])
        if rank == 0:
            print(f"all ranks hold identical weights: {not differs}")
    if rank == 0:
        result = net.evaluate(X_test, y_test)
        print(f"trained {args.epochs} epochs in {seconds:.1f} s on {size} rank(s)")
        print(f"test accuracy: {result['accuracy']:.4f}  (test loss {result['loss']:.4f})")
        save_loss_curve(history.history["loss"],
                        os.path.join(args.out, "distributed_digits_loss.png"),
                        f"64-128-64-10 MLP on the digits, {size} rank(s)", ylabel="cross-entropy",
                        extra={"test": history.history["val_loss"]})


if __name__ == "__main__":
    main()
