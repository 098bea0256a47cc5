"""CPU cores for one NumPy training step: how many row shards, BLAS pinned to one thread, a pool.

NumPy's BLAS runs each matrix product on every core, but the element-wise work between products
(activations and their gradients, the loss, the optimizer update) runs on one core, and the
other cores cannot help with it: OpenBLAS's idle threads spin for about 0.1 s after each product.
A sharded step (:class:`bpgpu.kernels._plan.TrainStep`) instead splits the batch into blocks of
rows, runs each block's forward and backward in its own thread with BLAS pinned to one thread,
and splits the gradient sum and the optimizer update over the same threads, so every core works
through the whole step.

When: the network is made of fast operations only, BLAS has T >= 2 threads (what
``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / threadpoolctl set; threadpoolctl must find the
BLAS), and the step is large enough to pay for the hand-offs: ``rows x parameters >= MIN_WORK``
and at least ``MIN_ROWS`` rows for each of T shards. Then it uses T shards; with fewer rows it
stays in one piece rather than leave BLAS threads idle (on a 16-core machine a batch of 256 would
make 4 shards on 4 cores where BLAS uses 16). ``BPGPU_CPU_SHARDS=k`` sets k regardless of size
(``1`` turns sharding off).

A step in one piece keeps its optimizer update on one thread: right after the backward pass's
last product OpenBLAS's workers are still spinning on the other cores, and a second thread
splitting the update finds no core free. Measured on the 2-vCPU VM (Adam over 2.6 M float32
parameters, blocked, best of 15): 8.5 ms on one thread, 8.4 ms on two right after a product,
6.5 ms on two with no product before; the whole mlp-10x512 step 1.02x slower with it.
"""

import contextlib
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from . import _denormals

__all__ = ["shard_count", "one_blas_thread", "pinned", "run_parallel", "MIN_ROWS", "MIN_WORK"]

#: Fewest rows per shard: below this, single-threaded matrix products lose too much efficiency.
MIN_ROWS = 64
#: Fewest multiply-adds in one forward pass (rows x parameters) worth sharding: handing work to
#: a thread and back costs 50-200 us on a virtual machine, a few percent of such a step.
MIN_WORK = 1 << 27

_blas = None          # threadpoolctl's controller over the loaded BLAS libraries, or False
_pin_lock = threading.Lock()
_pin_depth = 0        # steps inside one_blas_thread() now (several networks may train at once)
_pin_limiter = None   # threadpoolctl's limiter that holds the original thread counts
_pool = None          # ThreadPoolExecutor with _pool_size workers
_pool_size = 0
_pool_lock = threading.Lock()


def _blas_controller():
    """threadpoolctl's controller over the BLAS libraries loaded at the first call (NumPy's among
    them; one loaded later, e.g. by importing torch afterwards, is left alone), or False."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = False
        else:
            controller = ThreadpoolController().select(user_api="blas")
            _blas = controller if controller.lib_controllers else False
    return _blas


def _forced():
    """``BPGPU_CPU_SHARDS`` as a positive int, or None when unset."""
    text = os.environ.get("BPGPU_CPU_SHARDS", "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"BPGPU_CPU_SHARDS must be a positive integer, got {text!r}")
    return value


def shard_count(rows, parameters):
    """How many row shards a step of ``rows`` rows over ``parameters`` weights should use (1:
    no sharding)."""
    forced = _forced()
    if forced is not None:
        return max(1, min(forced, rows))
    if rows < 2 * MIN_ROWS or rows * parameters < MIN_WORK:
        return 1
    blas = _blas_controller()
    if not blas:
        return 1
    threads = max(lib.num_threads for lib in blas.lib_controllers)
    return threads if rows >= threads * MIN_ROWS else 1


@contextlib.contextmanager
def one_blas_thread():
    """A context in which BLAS runs every product in the calling thread. Nested or concurrent
    entries (networks training in several threads) share one limit; the last to leave restores
    the thread counts found by the first."""
    global _pin_depth, _pin_limiter
    blas = _blas_controller()
    if not blas:
        yield
        return
    with _pin_lock:
        if _pin_depth == 0:
            _pin_limiter = blas.limit(limits=1)
        _pin_depth += 1
    try:
        yield
    finally:
        with _pin_lock:
            _pin_depth -= 1
            if _pin_depth == 0:
                _pin_limiter.restore_original_limits()
                _pin_limiter = None


def pinned():
    """Whether a step is inside :func:`one_blas_thread` now (its products run one thread each:
    the NumPy kernels then send them to MKL where it is chosen, :mod:`bpgpu.kernels._mkl_blas`)."""
    return _pin_depth > 0


def run_parallel(jobs):
    """Run the callables ``jobs`` at once: the first in this thread, the rest in the pool, each
    in a copy of this thread's context (``numpy.errstate`` included) and with subnormals flushed
    when this thread flushes them (:mod:`bpgpu.kernels._denormals`). Returns their results in
    order; the first exception is raised after every job has finished."""
    global _pool, _pool_size
    if len(jobs) == 1:
        return [jobs[0]()]
    with _pool_lock:
        if len(jobs) - 1 > _pool_size:  # a bigger pool; the old one's threads end once unused
            _pool_size = len(jobs) - 1
            _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="bpgpu-shard")
        pool = _pool
    futures = [pool.submit(contextvars.copy_context().run, _denormals.carry(job))
               for job in jobs[1:]]
    results, error = [], None
    try:
        results.append(jobs[0]())
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the workers finish
        error = exc
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
    if error is not None:
        raise error
    return results
