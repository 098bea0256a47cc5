"""Emulated ``cupy.ElementwiseKernel``, ``cupy.ReductionKernel`` and ``cupy.RawKernel``.

Each takes the kernel's real CUDA C code and wraps it in a C++ harness playing CuPy's part:

* elementwise: the loop over the broadcast shape, binding each input as ``const T &x`` and each
  output as ``T &y`` at the element's offset, as CuPy's generated code does; ``i`` is the index;
* reduction: CuPy's order of operations for a full reduction with one block of 512 threads
  (thread t folds elements t, t + 512, ... with ``reduce_expr``, then a tree halves 512 partial
  results), then ``post_map_expr``;
* raw: the kernel function itself, launched over a serial loop of blocks whose threads run as
  fibers (see cuda_emu.h), with arguments checked against the kernel's parameter types.

What the emulation does not model it refuses with :class:`EmulationError` (generic or raw
parameters, reductions over some axes, multi-dimensional launches, partial-mask shuffles...).
"""

import ctypes
import re

import numpy as np

from . import cuda
from .compiler import EmulationError, build

_C_TYPES = {"float16": "float16", "float32": "float", "float64": "double", "int32": "int", "int64": "long long",
            "uint64": "unsigned long long", "bool": "bool"}
_ERROR_SIZE = 512
_pending = []


def _queue(kernel):
    _pending.append(kernel)


def compile_pending():
    """Compile every queued kernel in one g++ call."""
    units = [(k.name, k.unit_source()) for k in _pending]
    try:
        lib = build(units)
    except EmulationError:
        failed = list(_pending)
        _pending.clear()
        for k in failed:
            k.broken = True
        raise
    for k in _pending:
        k.bind(lib)
    _pending.clear()


def _parse_params(text):
    """``"float32 x, float32 c"`` -> [(numpy dtype, name)]; refuses what CuPy would treat as
    generic or raw."""
    params = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        words = part.split()
        if len(words) != 2 or words[0] not in _C_TYPES:
            raise EmulationError(f"emulation models only fixed-type parameters "
                                 f"({', '.join(_C_TYPES)}), got {part!r}")
        params.append((np.dtype(words[0]), words[1]))
    return params


class _Kernel:
    """A queued, lazily compiled elementwise or reduction kernel."""

    def __init__(self, in_params, out_params, name, options):
        if options:
            raise EmulationError(f"kernel {name}: compiler options {options} are not modelled")
        self.inputs = _parse_params(in_params)
        self.outputs = _parse_params(out_params)
        self.name = name
        self.function = None
        self.broken = False
        _queue(self)

    def bind(self, lib):
        self.function = getattr(lib, f"emu_{self.name}")
        self.function.restype = ctypes.c_int

    def _function(self):
        if self.broken:
            raise EmulationError(f"kernel {self.name} did not compile (see the earlier error)")
        if self.function is None:
            compile_pending()
        return self.function

    def _prepare(self, args):
        """(shape, array list, keep-alive list) for a call; checks argument types like CuPy."""
        n_in, params = len(self.inputs), self.inputs + self.outputs
        if len(args) not in (n_in, len(params)):
            raise TypeError(f"kernel {self.name} takes {n_in} inputs (and optionally "
                            f"{len(self.outputs)} outputs), got {len(args)} arguments")
        arrays, scalars = {}, {}
        # args may stop after the inputs (the outputs are then allocated): no strict pairing
        for k, (arg, (dtype, name)) in enumerate(zip(args, params, strict=False)):
            if isinstance(arg, np.ndarray):
                if arg.dtype != dtype:
                    raise TypeError(f"kernel {self.name}: argument {name} has dtype {arg.dtype}, "
                                    f"the kernel declares {dtype} (CuPy refuses a mismatched array)")
                arrays[k] = arg
            elif k >= n_in:
                raise TypeError(f"kernel {self.name}: output {name} must be an array")
            elif isinstance(arg, (bool, int, float, np.generic)):
                scalars[k] = np.asarray(arg, dtype=dtype)
            else:
                raise TypeError(f"kernel {self.name}: argument {name} is a {type(arg).__name__}")
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
        return arrays, scalars, shape

    def _launch(self, arrays, scalars, shape):
        """Run (or, during stream capture, record) the compiled loop over ``shape``; scalars
        and arrays broadcast to it get stride 0."""
        count = len(self.inputs) + len(self.outputs)
        ndim = max(len(shape), 1)
        full = shape if shape else (1,)
        ptrs = (ctypes.c_void_p * count)()
        strides = (ctypes.c_longlong * (count * ndim))()
        for k in range(count):
            if k in scalars:
                ptrs[k] = scalars[k].ctypes.data
                continue
            view = np.broadcast_to(arrays[k], shape).reshape(full) if shape else \
                arrays[k].reshape(1)
            ptrs[k] = arrays[k].ctypes.data
            for d in range(ndim):
                strides[k * ndim + d] = view.strides[d]
        shape_c = (ctypes.c_longlong * ndim)(*full)
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        function = self._function()
        keep = (arrays, scalars)  # the buffers stay alive as long as a graph may replay this

        def launch():
            status = function(ctypes.c_longlong(size), ctypes.c_int(ndim), shape_c, ptrs, strides)
            if status:
                raise EmulationError(f"kernel {self.name} failed with status {status} {keep!r:.0}")
        cuda.run(self.name, launch)

    _LOOP_HEAD = r"""
    long long _emu_idx[32], _emu_off[NARGS];
    for (long long i = 0; i < _emu_n; ++i) {
        long long _emu_rest = i;
        for (int _emu_d = _emu_ndim - 1; _emu_d >= 0; --_emu_d) {
            _emu_idx[_emu_d] = _emu_rest % _emu_shape[_emu_d];
            _emu_rest /= _emu_shape[_emu_d];
        }
        for (int _emu_k = 0; _emu_k < NARGS; ++_emu_k) {
            _emu_off[_emu_k] = 0;
            for (int _emu_d = 0; _emu_d < _emu_ndim; ++_emu_d)
                _emu_off[_emu_k] += _emu_idx[_emu_d] * _emu_strides[_emu_k * _emu_ndim + _emu_d];
        }
"""

    def _signature(self):
        return (f'extern "C" int emu_{self.name}(long long _emu_n, int _emu_ndim, '
                f"const long long* _emu_shape, char** _emu_ptrs, const long long* _emu_strides)")


class ElementwiseKernel(_Kernel):
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name)``; the output arrays
    must be passed or are allocated with the broadcast shape."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True,
                 preamble="", no_return=False, return_tuple=False, loop_prep="", after_loop="",
                 options=()):
        if preamble or loop_prep or after_loop:
            raise EmulationError(f"kernel {name}: preamble/loop_prep/after_loop are not modelled")
        if "_ind" in operation:
            raise EmulationError(f"kernel {name}: the indexer _ind is not modelled")
        self.operation = operation
        super().__init__(in_params, out_params, name, options)

    def unit_source(self):
        count = len(self.inputs) + len(self.outputs)
        # Every parameter is bound inside the loop (a scalar at offset 0 of its own buffer).
        decls = []
        for k, (dtype, name) in enumerate(self.inputs + self.outputs):
            const = "const " if k < len(self.inputs) else ""
            ctype = _C_TYPES[dtype.name]
            decls.append(f"{const}{ctype} &{name} = *({const}{ctype}*)(_emu_ptrs[{k}] + _emu_off[{k}]);")
        return (f"{self._signature()} {{\n"
                + self._LOOP_HEAD.replace("NARGS", str(count))
                + "\n".join(decls) + "\n{\n" + self.operation + ";\n}\n    }\n    return 0;\n}\n")

    def __call__(self, *args, size=None, block_size=None, stream=None):
        if size is not None or block_size is not None:
            raise EmulationError(f"kernel {self.name}: size=/block_size= are not modelled")
        n_in = len(self.inputs)
        args = list(args)
        arrays, scalars, shape = self._prepare(args)
        if len(args) == n_in:
            for k, (dtype, _) in enumerate(self.outputs, start=n_in):
                cuda.allocated()
                arrays[k] = np.empty(shape, dtype)
        for k, (_, name) in enumerate(self.outputs, start=n_in):
            if arrays[k].shape != shape:
                raise ValueError(f"kernel {self.name}: output {name} has shape "
                                 f"{arrays[k].shape}, the arguments broadcast to {shape}")
            if not arrays[k].flags.writeable:
                raise ValueError(f"kernel {self.name}: output {name} is read-only")
        self._launch(arrays, scalars, shape)
        outs = [arrays[k] for k in range(n_in, n_in + len(self.outputs))]
        return outs[0] if len(outs) == 1 else tuple(outs)


class ReductionKernel(_Kernel):
    """``cupy.ReductionKernel`` for full reductions (no ``axis``) into a 0-d output."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, reduce_dims=True, preamble="", options=()):
        if preamble:
            raise EmulationError(f"kernel {name}: preamble is not modelled")
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity = identity
        super().__init__(in_params, out_params, name, options)
        if len(self.outputs) != 1:
            raise EmulationError(f"kernel {name}: only one output is modelled")
        self.reduce_type = reduce_type or _C_TYPES[self.outputs[0][0].name]

    def unit_source(self):
        n_in = len(self.inputs)
        count = n_in + 1
        decls = []
        for k, (dtype, name) in enumerate(self.inputs):
            ctype = _C_TYPES[dtype.name]
            decls.append(f"const {ctype} &{name} = *(const {ctype}*)(_emu_ptrs[{k}] + _emu_off[{k}]);")
        scalar_decls = [f"const {_C_TYPES[d.name]} &{name}_at0 = *(const {_C_TYPES[d.name]}*)"
                        f"(_emu_ptrs[{k}]);" for k, (d, name) in enumerate(self.inputs)]
        out_dtype, out_name = self.outputs[0]
        out_ctype = _C_TYPES[out_dtype.name]
        # Post-map code sees the inputs as their first element: right for the scalars it uses
        # (an array input in post-map code does not compile on CuPy either, see compile check).
        post_names = "\n".join(f"const {_C_TYPES[d.name]} &{name} = {name}_at0;"
                               for d, name in self.inputs)
        return (f"#define REDUCE(a, b) ({self.reduce_expr})\n"
                f"#define POST_MAP(a) ({self.post_map_expr})\n"
                f"typedef {self.reduce_type} _type_reduce;\n"
                f"{self._signature()} {{\n"
                + "\n".join(scalar_decls) + "\n"
                "    _type_reduce _emu_partial[512];\n"
                "    for (int _emu_t = 0; _emu_t < 512; ++_emu_t)\n"
                f"        _emu_partial[_emu_t] = _type_reduce({self.identity});\n"
                + self._LOOP_HEAD.replace("NARGS", str(count))
                + "\n".join(decls) + "\n"
                f"        _type_reduce _a = static_cast<_type_reduce>({self.map_expr});\n"
                "        _emu_partial[i % 512] = REDUCE(_emu_partial[i % 512], _a);\n    }\n"
                "    for (int _emu_half = 256; _emu_half >= 1; _emu_half >>= 1)\n"
                "        for (int _emu_t = 0; _emu_t < _emu_half; ++_emu_t) {\n"
                "            _type_reduce _emu_a = _emu_partial[_emu_t];\n"
                "            _type_reduce _emu_b = _emu_partial[_emu_t + _emu_half];\n"
                "            _emu_partial[_emu_t] = REDUCE(_emu_a, _emu_b);\n        }\n"
                "    {\n" + post_names + "\n"
                f"    {out_ctype} &{out_name} = *({out_ctype}*)(_emu_ptrs[{n_in}]);\n"
                "    POST_MAP(_emu_partial[0]);\n    }\n    return 0;\n}\n"
                "#undef REDUCE\n#undef POST_MAP\n")

    def __call__(self, *args, out=None, axis=None, keepdims=False, stream=None):
        if axis is not None or keepdims:
            raise EmulationError(f"kernel {self.name}: only full reductions are modelled")
        if len(args) != len(self.inputs):
            raise TypeError(f"kernel {self.name} takes {len(self.inputs)} inputs, got {len(args)}")
        arrays, scalars, shape = self._prepare(list(args))
        for k, (_, name) in enumerate(self.inputs):
            if k in arrays and re.search(rf"\b{name}\b", self.post_map_expr):
                raise EmulationError(f"kernel {self.name}: post_map_expr reads {name}, passed as "
                                     "an array: CuPy's generated code binds array inputs only "
                                     "inside the element loop, so this does not compile")
        if out is None:
            cuda.allocated()
        result = np.empty((), self.outputs[0][0]) if out is None else out
        if result.shape != () or result.dtype != self.outputs[0][0]:
            raise EmulationError(f"kernel {self.name}: out must be a 0-d "
                                 f"{self.outputs[0][0]} array")
        arrays[len(self.inputs)] = result  # broadcast over the loop: stride 0
        self._launch(arrays, scalars, shape)
        return result


_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


class RawKernel:
    """``cupy.RawKernel(code, name)``: ``kernel(grid, block, args)`` runs the real source."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, jitify=False):
        if options or enable_cooperative_groups or jitify or backend != "nvrtc":
            raise EmulationError(f"raw kernel {name}: options/cooperative groups/jitify are not "
                                 "modelled")
        if name not in _SIGNATURE.findall(code):
            raise EmulationError(f'raw kernel {name}: no extern "C" __global__ function of that '
                                 "name in its source")
        self.code, self.name = code, name
        self.launch_fn = self.signature = None
        self.broken = False
        _queue(self)

    def unit_source(self):
        return (f"{self.code}\n"
                f'extern "C" int emu_launch_{self.name}(void** args, const unsigned int* grid, '
                f"const unsigned int* block, char* error, size_t size) {{\n"
                f"    return emu_launch({self.name}, args, grid, block, error, size);\n}}\n"
                f'extern "C" const char* emu_signature_{self.name}() {{\n'
                f"    static std::string s = emu_describe({self.name});\n"
                f"    return s.c_str();\n}}\n")

    def bind(self, lib):
        self.launch_fn = getattr(lib, f"emu_launch_{self.name}")
        self.launch_fn.restype = ctypes.c_int
        describe = getattr(lib, f"emu_signature_{self.name}")
        describe.restype = ctypes.c_char_p
        self.signature = describe().decode().rstrip(",").split(",")

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        if self.broken:
            raise EmulationError(f"raw kernel {self.name} did not compile")
        if self.launch_fn is None:
            compile_pending()
        if shared_mem:
            raise EmulationError(f"raw kernel {self.name}: dynamic shared memory is not modelled")
        grid, block = _dim3(grid), _dim3(block)
        if len(args) != len(self.signature):
            raise TypeError(f"raw kernel {self.name} takes {len(self.signature)} arguments, got "
                            f"{len(args)}")
        keep, slots = [], (ctypes.c_void_p * len(args))()
        for k, (arg, want) in enumerate(zip(args, self.signature, strict=True)):
            if isinstance(arg, np.ndarray):
                got = "*" + arg.dtype.name
                if not arg.flags.c_contiguous:
                    raise EmulationError(f"raw kernel {self.name}: argument {k} is not "
                                         "C-contiguous (a raw kernel sees only the pointer)")
                value = ctypes.c_void_p(arg.ctypes.data)
            else:
                if isinstance(arg, np.generic):
                    got = arg.dtype.name
                elif isinstance(arg, float):
                    got = "float64"
                elif isinstance(arg, int) and not isinstance(arg, bool):
                    got = "int64"
                else:
                    raise TypeError(f"raw kernel {self.name}: argument {k} is a "
                                    f"{type(arg).__name__}")
                value = np.array(arg, dtype=got)
            if got != want:
                raise TypeError(f"raw kernel {self.name}: argument {k} is {got}, the kernel "
                                f"declares {want}")
            keep.append(value)
            slots[k] = ctypes.addressof(value) if isinstance(value, ctypes.c_void_p) \
                else value.ctypes.data
        launch_fn, grid_c, block_c = self.launch_fn, (ctypes.c_uint * 3)(*grid), \
            (ctypes.c_uint * 3)(*block)

        def launch():
            error = ctypes.create_string_buffer(_ERROR_SIZE)
            status = launch_fn(slots, grid_c, block_c, error, ctypes.c_size_t(_ERROR_SIZE))
            if status:
                raise EmulationError(f"raw kernel {self.name}: {error.value.decode()} "
                                     f"{keep!r:.0}")
        cuda.run(self.name, launch)


def _dim3(value):
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(value) <= 3 or not all(isinstance(v, (int, np.integer)) for v in value):
        raise TypeError(f"grid and block must be 1 to 3 integers, got {value!r}")
    return tuple(int(v) for v in value) + (1,) * (3 - len(value))
