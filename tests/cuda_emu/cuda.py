"""Emulated ``cupy.cuda``: devices, streams, CUDA graphs, pinned memory and events.

One emulated machine per process (module state), with ``device_count`` devices. Every device
operation of the fake module (kernel launches, copies, matrix products) goes through
:func:`run`, which records the device that is current and, while a stream captures, records the
operation into the graph instead of running it, as CUDA stream capture does; allocations happen
at once (at capture time, as CuPy's pool does). ``Graph.launch()`` replays the recorded
operations in order with the arguments they were captured with. Reading a device value on the
host during capture raises, as it would on a GPU.
"""

import contextlib
import types

device_count = 1
_current = [0]          # stack of current device ids
_capturing = []         # the stream currently capturing (at most one)
log = []                # (operation name, device id) of every operation run or captured


class CaptureError(RuntimeError):
    """What CUDA would refuse during stream capture."""


def run(name, operation):
    """Run ``operation()`` now, or record it into the capturing stream's graph."""
    log.append((name, _current[-1]))
    if _capturing:
        _capturing[-1]._recorded.append((name, operation))
    else:
        operation()


def host_read(what):
    """Called before a value moves device -> host."""
    if _capturing:
        raise CaptureError(f"{what}: a device-to-host read during stream capture "
                           "(cudaErrorStreamCaptureUnsupported on a GPU)")


class Device:
    def __init__(self, device=None):
        self.id = _current[-1] if device is None else int(device)
        if not 0 <= self.id < device_count:
            raise RuntimeError(f"emulated CUDA: no device {self.id} (device_count={device_count})")

    def __enter__(self):
        _current.append(self.id)
        return self

    def __exit__(self, *exc):
        _current.pop()

    def use(self):
        _current[-1] = self.id

    def synchronize(self):
        host_read("Device.synchronize")


def current_device():
    return _current[-1]


class Graph:
    def __init__(self, recorded):
        self._recorded = list(recorded)

    def launch(self, stream=None):
        if _capturing:
            raise CaptureError("Graph.launch during capture is not modelled")
        for name, operation in self._recorded:
            log.append((f"graph:{name}", _current[-1]))
            operation()

    @property
    def operations(self):
        return [name for name, _ in self._recorded]


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False):
        self._recorded = []
        self.null_stream = null

    def __enter__(self):
        _streams.append(self)
        return self

    def __exit__(self, *exc):
        _streams.pop()

    def begin_capture(self, mode=None):
        if self.null_stream:
            raise CaptureError("the legacy default stream cannot capture")
        if _capturing:
            raise CaptureError("a stream is already capturing")
        self._recorded = []
        _capturing.append(self)

    def end_capture(self):
        if not _capturing or _capturing[-1] is not self:
            raise CaptureError("end_capture on a stream that is not capturing")
        _capturing.pop()
        return Graph(self._recorded)

    def is_capturing(self):
        return bool(_capturing) and _capturing[-1] is self

    def synchronize(self):
        host_read("Stream.synchronize")

    @property
    def done(self):
        return True


_null = Stream(null=True)
_streams = [_null]


def get_current_stream():
    return _streams[-1]


class MemoryPool:
    """Allocations are NumPy's; the pool only counts what went through it."""

    def __init__(self):
        self.allocations = 0

    def malloc(self, size):
        self.allocations += 1
        return size


_allocators = []


@contextlib.contextmanager
def using_allocator(allocator=None):
    _allocators.append(allocator)
    try:
        yield
    finally:
        _allocators.pop()


def allocated():
    """Count one allocation against the allocator in use (fake_cupy calls it)."""
    if _allocators and _allocators[-1] is not None:
        _allocators[-1](0)


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded = False

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        host_read("Event.synchronize")


def alloc_pinned_memory(size):
    return bytearray(size)


def reset(devices=1):
    """A fresh emulated machine with ``devices`` devices and an empty log."""
    global device_count
    device_count = devices
    _current[:] = [0]
    _capturing.clear()
    _allocators.clear()
    _streams[:] = [_null]
    log.clear()


def make_namespace():
    """The ``cupy.cuda`` attribute of the fake module."""
    return types.SimpleNamespace(
        Device=Device, Stream=Stream, Graph=Graph, Event=Event, MemoryPool=MemoryPool,
        get_current_stream=get_current_stream, using_allocator=using_allocator,
        alloc_pinned_memory=alloc_pinned_memory,
        runtime=types.SimpleNamespace(getDeviceCount=lambda: device_count))
