"""Every CuPy kernel builder in bpgpu, and every argument tuple the code can call it with.

One table, used by ``ci/compile_cuda.py`` (compiles each variant with NVRTC) and by the CPU
emulation tests (``tests/test_cuda_emulated.py`` builds each variant and compares it with the
reference path). A builder is a function of ``bpgpu/kernels/_<module>.py`` (named here by
``<module>``, without the internal module's underscore) that returns a CuPy kernel object (or a
tuple of them). Per builder:

* ``domains``: each parameter of the builder and the values the code can pass (their product,
  less what ``reachable`` rules out, is every variant);
* ``scalars``: the kernel parameters call sites pass as Python or NumPy scalars (the others are
  device arrays);
* ``broadcast``: array parameters that call sites broadcast (a bias row, a 0-d scale), so CuPy
  sees them as non-contiguous;
* ``ndims``: the ranks the arrays have after CuPy merges contiguous dimensions;
* ``device_scalars``: the scalars may also come as 0-d device arrays (broadcast), as they do in
  a CUDA-graph step (bpgpu.kernels._cuda_graphs), which CuPy compiles as another variant.

compile_cuda.py checks the table against the code: a builder missing here, or a builder
parameter without a domain, fails CI.
"""

import itertools

DTYPES = ("float32", "float64")
#: Element-wise kernels of Dense also come as float16 storage with float32 arithmetic (the
#: fast mixed-precision step, bpgpu/kernels/_mixed_step.py).
WITH_HALF = DTYPES + ("float16",)
BOOLS = (False, True)


def _sgd_reachable(v):
    """SGD refuses nesterov without momentum (optimizers.SGD)."""
    return not v["nesterov"] or v["momentum"]


def _cast_reachable(v):
    """Casts run between float32 and float16 only (masters -> copies, batch, output)."""
    return {v["src"], v["dst"]} == {"float32", "float16"}


def builders(modules):
    """``{(module name, builder name): spec}``; ``modules`` maps a module name (``cupy_fused``,
    ``cupy_random``) to the imported module, whose tables give the activation names."""
    fused = modules["cupy_fused"]
    update_scalars = {"clip_value", "lr", "weight_decay", "momentum", "one_minus_dampening",
                      "first_step", "alpha", "one_minus_alpha", "eps", "decay_factor", "beta1",
                      "one_minus_beta1", "beta2", "one_minus_beta2", "bias_correction2_sqrt",
                      "step_size"}
    flat = {"scalars": update_scalars, "broadcast": {"norm_scale"}, "ndims": (1,),
            "device_scalars": True}
    return {
        ("cupy_fused", "_bias_activation"): {
            "domains": {"act": tuple(fused._FORWARD), "has_bias": BOOLS, "dtype": WITH_HALF},
            "scalars": {"slope"}, "broadcast": {"b"}, "ndims": (1, 2)},
        ("cupy_fused", "_activation_grad"): {
            "domains": {"act": tuple(fused._BACKWARD), "dtype": WITH_HALF},
            "scalars": {"slope"}, "ndims": (1, 2)},
        ("cupy_fused", "_add_scaled"): {
            "domains": {"dtype": WITH_HALF}, "scalars": {"c"}, "ndims": (1, 2)},
        ("cupy_fused", "_cast_kernel"): {
            "domains": {"src": ("float32", "float16"), "dst": ("float32", "float16")},
            "reachable": _cast_reachable, "ndims": (1, 2)},
        ("cupy_fused", "_unscale_kernel"): {"domains": {}},
        ("cupy_fused", "_xent_half_kernel"): {"domains": {"ids": BOOLS}},
        ("cupy_fused", "_mse_half_kernels"): {
            "domains": {}, "scalars": {"scale", "loss_scale", "size"}, "ndims": (1,)},
        ("cupy_fused", "_xent_kernel"): {"domains": {"ids": BOOLS, "dtype": DTYPES}},
        ("cupy_fused", "_mean_kernel"): {
            "domains": {"dtype": DTYPES}, "scalars": {"n"}, "ndims": (1,)},
        ("cupy_fused", "_mse_kernels"): {
            "domains": {"dtype": DTYPES}, "scalars": {"scale", "size"}, "ndims": (1,)},
        ("cupy_fused", "_norm_scale_kernel"): {
            "domains": {"clip_value": BOOLS, "dtype": DTYPES},
            "scalars": {"clip_value", "max_norm"}, "ndims": (1,)},
        ("cupy_fused", "_sgd_kernel"): {
            "domains": {"dtype": DTYPES, "clip_value": BOOLS, "clip_norm": BOOLS,
                        "weight_decay": BOOLS, "momentum": BOOLS, "nesterov": BOOLS},
            "reachable": _sgd_reachable, **flat},
        ("cupy_fused", "_rmsprop_kernel"): {
            "domains": {"dtype": DTYPES, "clip_value": BOOLS, "clip_norm": BOOLS,
                        "weight_decay": BOOLS, "momentum": BOOLS, "centered": BOOLS}, **flat},
        ("cupy_fused", "_adam_kernel"): {
            "domains": {"dtype": DTYPES, "clip_value": BOOLS, "clip_norm": BOOLS,
                        "decay_mode": (0, 1, 2)}, **flat},
        ("cupy_random", "_uniform_kernel"): {
            "domains": {"dtype": DTYPES}, "scalars": {"key0", "key1", "draw"}, "ndims": (1,)},
    }


def variants(spec):
    """Every keyword-argument dict the builder can be called with."""
    names = list(spec["domains"])
    for values in itertools.product(*(spec["domains"][n] for n in names)):
        kwargs = dict(zip(names, values, strict=True))
        if spec.get("reachable", lambda v: True)(kwargs):
            yield kwargs


def kernels_of(built):
    """The kernel objects a builder returned (one, or a tuple)."""
    return list(built) if isinstance(built, tuple) else [built]
