"""CUDA graphs for the fast training step on CuPy: capture the step once, replay it every step.

A fast step launches a few dozen small kernels; on a GPU each launch costs the host several
microseconds, which for a small network is most of the step. A CUDA graph records the launches
once and replays them with one call. ``Network(..., cuda_graphs=True)`` turns it on; it is off
by default until measured faster on a GPU (``ci/gpu_check.sh`` measures it).

How :meth:`GraphedSteps.train_step` runs a step:

1. The first step with a batch shape runs uncaptured, with the update kernels already reading
   their per-step numbers (learning rate, bias corrections, ...) from a small device buffer
   (``DeviceScalars`` of the kernel set): every kernel variant the graph needs gets compiled and
   every buffer allocated.
2. The second step with that shape is captured on a side stream: the batch is first copied into
   static input buffers the graph reads; every allocation during capture comes from a memory
   pool private to the graph, so no memory the graph uses is handed to anything else. The graph
   is then launched for this step.
3. Every later step with that shape: copy the batch into the static buffers; run the
   optimizer's Python bookkeeping (step count, schedule, learning rate) with the update kernels
   only recording their scalars; upload the scalars from pinned host memory (a ring of buffers,
   so the host never overwrites numbers a queued copy has yet to read); launch the graph. The
   loss is returned as a copy of the graph's loss buffer.

One shape is captured: in ``fit``, the full batches; the last partial batch of an epoch, and
any other shape, runs uncaptured. A new optimizer, or a change of its settings, drops the graph
(captured again two steps later). Not captured at all, with the reason in :attr:`status`:
layers that draw random numbers each step (Dropout), an optimizer update without a fused
kernel. Steps whose output feeds metrics and steps with gradient hooks run uncaptured too.
Numbers are those of the uncaptured step: the same kernels in the same order.
"""

from typing import Any

from ..layers.dropout import Dropout

__all__ = ["GraphedSteps"]

#: Pinned host buffers the per-step scalars rotate through (steps the host may run ahead).
UPLOAD_RING = 4


def _settings(optimizer):
    """What selects the update kernels: the optimizer's configuration but its learning rate."""
    return repr(sorted((k, v) for k, v in optimizer.get_config().items() if k != "lr"))


class _Captured:
    """One captured step and everything its graph reads or writes."""

    def __init__(self, key, graph, pool, static_x, static_y, value, optimizer, keep):
        self.key, self.graph, self.pool = key, graph, pool
        self.static_x, self.static_y, self.value = static_x, static_y, value
        self.optimizer, self.settings = optimizer, _settings(optimizer)
        self.keep = keep  # the operations' buffers at capture time: never freed while replayed


class GraphedSteps:
    """Captured training steps of one fast plan (module docstring). ``status`` says whether and
    what is captured; ``replays`` counts graph launches after capture."""

    def __init__(self, net, plan):
        self.net, self.plan, self.kernels = net, plan, plan.kernels
        self.cupy = plan.kernels.cupy
        self.captured = None
        self.seen = set()        # shapes that ran their uncaptured first step
        self.scalars: Any = None  # the kernel set's DeviceScalars
        self.replays = 0
        self._ring: Any = None   # UPLOAD_RING (pinned host buffer, event) pairs
        self._turn = 0
        self.refusal = self._refusal()

    def _refusal(self):
        random = sorted({type(layer).__name__ for layer in self.net.structure.all_layers
                         if isinstance(layer, Dropout) and layer.p > 0})
        if random:
            return (f"not captured: {', '.join(random)} draws new random numbers every step "
                    "(a replay would repeat them)")
        return None

    @property
    def status(self):
        reason = self.refusal or self._rule_refusal()
        if reason:
            return reason
        if self.captured is None:
            return "CUDA graph: not captured yet (a batch shape is captured on its second step)"
        return (f"CUDA graph: captured for batch {self.captured.key[0][0]}, "
                f"{self.replays} replays")

    def _rule_refusal(self):
        if self.kernels.update_rule(self.net.optimizer) is None:
            return f"not captured: {type(self.net.optimizer).__name__} has no fused update kernel"
        return None

    # -- the step ---------------------------------------------------------------------------------
    def train_step(self, x, y):
        """One training step on device arrays; the loss (0-d, on the device)."""
        if self.refusal or self._rule_refusal():
            return self._uncaptured(x, y)
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        captured = self.captured
        if captured is not None and (captured.optimizer is not self.net.optimizer
                                     or captured.settings != _settings(self.net.optimizer)):
            self.captured, captured = None, None
            self.seen.clear()
        if captured is not None:
            return self._replay(captured, x, y) if captured.key == key else \
                self._uncaptured(x, y)
        if key not in self.seen:
            self.seen.add(key)
            return self._warm_up(x, y)
        return self._capture(key, x, y)

    def _uncaptured(self, x, y):
        value, _ = self.plan.compute(x, y)
        self.plan.finish(update=True)
        return value

    def _warm_up(self, x, y):
        """An ordinary step, but with the update reading its scalars from the device buffer."""
        if self.scalars is None:
            self.scalars = self.kernels.device_scalars(self.net.dtype)
        value, _ = self.plan.compute(x, y)
        with self.kernels.scalars_from(self.scalars, launch=True, upload=True):
            self.plan.finish(update=True)
        return value

    def _capture(self, key, x, y):
        cupy, plan = self.cupy, self.plan
        plan.sync_params()  # copies of replaced parameters must not become part of the graph
        static_x, static_y = cupy.empty(x.shape, x.dtype), cupy.empty(y.shape, y.dtype)
        cupy.copyto(static_x, x)
        cupy.copyto(static_y, y)
        pool = cupy.cuda.MemoryPool()
        stream = cupy.cuda.Stream(non_blocking=True)
        with cupy.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                value, _ = plan.compute(static_x, static_y)
                with self.kernels.scalars_from(self.scalars, launch=True, upload=False):
                    plan.finish(update=True)
            finally:
                graph = stream.end_capture()
        keep = [dict(getattr(op, "buffers", {})) for op in [*plan.ops, plan.loss_op]]
        self.captured = _Captured(key, graph, pool, static_x, static_y, value,
                                  self.net.optimizer, keep)
        return self._launch(self.captured)

    def _replay(self, captured, x, y):
        cupy, plan = self.cupy, self.plan
        plan.sync_params()
        cupy.copyto(captured.static_x, x)
        cupy.copyto(captured.static_y, y)
        with self.kernels.scalars_from(self.scalars, launch=False):
            plan.finish(update=True)  # the optimizer's bookkeeping; the kernels only record
        self.replays += 1
        return self._launch(captured)

    def _launch(self, captured):
        """Upload this step's scalars, launch the graph, return a copy of its loss."""
        cupy = self.cupy
        stream = cupy.cuda.get_current_stream()
        if self._ring is None:
            self._ring = [(self.kernels.pinned_like(self.scalars.host), cupy.cuda.Event())
                          for _ in range(UPLOAD_RING)]
        host, done = self._ring[self._turn]
        self._turn = (self._turn + 1) % UPLOAD_RING
        done.synchronize()  # the copy that last read this buffer has run (no-op before the first)
        host[...] = self.scalars.host
        self.scalars.device.set(host, stream=stream)
        done.record(stream)
        captured.graph.launch(stream=stream)
        return captured.value.copy()
