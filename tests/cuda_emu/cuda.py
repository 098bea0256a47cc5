"""Emulated ``cupy.cuda``: devices, streams and CUDA graphs, recording what bpgpu asks of them.

Graph capture is modelled the way CUDA runs it: while a stream captures, kernel launches on it
are recorded instead of run; ``graph.launch()`` replays the recorded launches with the arguments
they were captured with. Work that reads a value back to the host during capture is an error on
a GPU, and raises here too.
"""

import types


def make_namespace():
    ns = types.SimpleNamespace()
    return ns
