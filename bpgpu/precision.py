"""Mixed precision: 16-bit compute with float32 master weights and dynamic loss scaling.

``Network(..., precision="mixed_float16")`` hands one :class:`MixedPrecision` object the whole
job; layers, losses and optimizers stay as they are and compute in the dtype of what they are
given:

* **master weights**: ``layer.params`` keep float32 arrays, and so do the optimizer's state,
  :meth:`~bpgpu.Network.get_weights` and checkpoints. For the forward and backward passes the
  policy puts 16-bit copies in their place (made once per update, cached until the master
  changes) and puts the masters back afterwards;
* **compute**: each batch is cast to the compute dtype, and every layer runs in it, except
  layers with ``keep_float32`` (BatchNorm, LayerNorm), whose parameters stay float32 and which
  compute their statistics in float32. Reductions over a batch (bias gradients) accumulate in
  float32 (:func:`wide_dtype`);
* **loss**: the network's output is cast to float32 before the loss, so softmax, log-sum-exp and
  the mean over the batch run in float32, as do penalties (on the master weights);
* **loss scaling** (:class:`LossScaler`, PyTorch GradScaler's rule and defaults): dL/dout is
  multiplied by the scale S before it enters the 16-bit backward pass, so small gradients do not
  flush to zero; the parameter gradients are cast to float32 and multiplied by 1/S, and reach the
  optimizer unscaled. If any holds inf or NaN, the update is skipped (weights, optimizer state and
  step count stay as they were) and S is halved; after ``growth_interval`` updates in a row
  without one, S doubles.

One device read per step: deciding to skip needs the answer on the host, as GradScaler's does.
``"mixed_bfloat16"`` (torch only: no other backend has bfloat16) uses no loss scaling by default,
as bfloat16 has float32's exponent range.

A skipped step is not a divergence: its loss is finite and recorded as usual. A loss that is
itself NaN or infinite (the forward pass overflowed float16, whose largest value is 65504, or the
weights diverged) is one, as in float32: the scale acts on the backward pass only and cannot
cure it, so ``fit`` raises :class:`~bpgpu.TrainingDivergedError` (that step's update, with
non-finite gradients, was skipped and the weights are those before it).

A network with a policy requires ``"mixed precision"`` (``net.engine_requirements``). On CuPy,
networks of ``Dense`` layers (with fused activations) and a softmax cross-entropy or MSE loss
run the fast mixed step (:mod:`bpgpu.kernels._mixed_step`: the same policy in float16 fused
kernels); everything else, and every other backend, runs the reference engine with the reason
in ``net.engine.reason``. The skip decision is the network's gradient hook (:mod:`bpgpu._engine`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["MixedPrecision", "LossScaler", "get_precision", "PRECISIONS", "wide_dtype",
           "serialize_precision", "deserialize_precision"]

#: The names ``Network(precision=...)`` accepts (besides None and a MixedPrecision object).
PRECISIONS = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}

#: Why a backend cannot compute in a 16-bit dtype, by (backend name, dtype name).
_MISSING_DTYPE = {
    ("numpy", "bfloat16"): "NumPy has no bfloat16 dtype",
    ("cupy", "bfloat16"): "CuPy has no bfloat16 dtype",
    ("array_api_strict", "float16"): "the Array API standard, which array_api_strict implements "
                                     "exactly, has no 16-bit floating dtypes",
    ("array_api_strict", "bfloat16"): "the Array API standard, which array_api_strict implements "
                                      "exactly, has no 16-bit floating dtypes",
}


def wide_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype to accumulate (or draw random numbers) in for data of floating ``dtype``:
    float32 for the 16-bit floats (float16, bfloat16), else ``dtype`` itself."""
    return xp.float32 if getattr(dtype, "itemsize", 0) == 2 else dtype


def _check_factor(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"LossScaler {name} must be a number in ({low}, {high}), got {value!r}")
    return float(value)


class LossScaler:
    """Dynamic loss scaling with ``torch.amp.GradScaler``'s rule and defaults.

    After every step: if a gradient held inf or NaN, the step is skipped,
    ``scale <- scale * backoff_factor`` and the count of good steps restarts at 0; otherwise the
    count grows by one and when it reaches ``growth_interval``, ``scale <- scale * growth_factor``
    (unless that overflows) and the count restarts.

    Attributes: ``scale`` (a Python float), ``growth_tracker`` (good steps since the last
    change), ``skipped_steps`` (every skipped step so far).
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        self.init_scale = _check_factor(init_scale, "init_scale", 0.0, float("inf"))
        self.growth_factor = _check_factor(growth_factor, "growth_factor", 1.0, float("inf"))
        self.backoff_factor = _check_factor(backoff_factor, "backoff_factor", 0.0, 1.0)
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) \
                or growth_interval < 1:
            raise ValueError(f"LossScaler growth_interval must be an integer >= 1, got "
                             f"{growth_interval!r}")
        self.growth_interval = growth_interval
        self.scale = self.init_scale
        self.growth_tracker = 0
        self.skipped_steps = 0

    def update(self, found_inf: bool) -> None:
        """Move the scale after a step whose gradients held inf/NaN (``found_inf``) or not."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            self.skipped_steps += 1
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            grown = self.scale * self.growth_factor
            if grown != float("inf"):
                self.scale = grown
            self.growth_tracker = 0

    def get_config(self) -> dict[str, Any]:
        return {"init_scale": self.init_scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval}

    def state_dict(self) -> dict[str, Any]:
        """``{"scale": float, "growth_tracker": int, "skipped_steps": int}`` (JSON-safe)."""
        return {"scale": self.scale, "growth_tracker": self.growth_tracker,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; ValueError (and no change) for anything else."""
        scale, tracker, skipped = state["scale"], state["growth_tracker"], state["skipped_steps"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale < \
                float("inf"):
            raise ValueError(f"a loss scale must be a finite number > 0, got {scale!r}")
        for name, value in (("growth_tracker", tracker), ("skipped_steps", skipped)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"the loss scaler's {name} must be an integer >= 0, got "
                                 f"{value!r}")
        self.scale, self.growth_tracker, self.skipped_steps = float(scale), tracker, skipped

    def __repr__(self) -> str:
        return f"LossScaler(scale={self.scale}, growth_interval={self.growth_interval})"


class MixedPrecision:
    """The mixed-precision policy of one network (see the module docstring).

    Args:
        compute_dtype: ``"float16"`` or ``"bfloat16"``: the dtype of the forward and backward
            passes.
        loss_scale: ``"auto"`` (a default :class:`LossScaler` for float16, none for bfloat16),
            a :class:`LossScaler`, or None (no loss scaling and no skipped steps).

    Attributes (after the Network binds it): ``compute`` (the backend's dtype), ``scaler``.
    """

    def __init__(self, compute_dtype: str = "float16",
                 loss_scale: LossScaler | str | None = "auto") -> None:
        if compute_dtype not in PRECISIONS.values():
            raise ValueError(f"compute_dtype must be one of {', '.join(PRECISIONS.values())}, "
                             f"got {compute_dtype!r}")
        if isinstance(loss_scale, str) and loss_scale == "auto":
            loss_scale = LossScaler() if compute_dtype == "float16" else None
        if loss_scale is not None and not isinstance(loss_scale, LossScaler):
            raise TypeError(f"loss_scale must be 'auto', a LossScaler or None, got {loss_scale!r}")
        self.compute_dtype = compute_dtype
        self.scaler = loss_scale
        self.backend: Any = None
        self.xp: Any = None
        self.compute: Any = None  # the backend's 16-bit dtype, once bound
        self.master: Any = None   # its float32
        #: n_r / G while a data-parallel fit steps on n_r of a global batch's G rows, else 1.0
        #: (see :meth:`backward_scale`); set by :mod:`bpgpu.distributed`.
        self.batch_fraction = 1.0
        self._copies: dict[tuple[int, str], tuple[Any, Any]] = {}  # (id(layer), key) -> (master array, its 16-bit copy)
        self._found_inf: Any = None  # a fast step's inf/NaN flag for the next gradient_hook

    @property
    def name(self) -> str:
        return f"mixed_{self.compute_dtype}"

    def __repr__(self) -> str:
        return f"MixedPrecision({self.compute_dtype!r}, loss_scale={self.scaler!r})"

    def bind(self, backend: Any, dtype_name: str) -> MixedPrecision:
        """Check that ``backend`` has the compute dtype and that the masters are float32, then
        compute there. ValueError (and no change) otherwise."""
        if dtype_name != "float32":
            raise ValueError(f"{self.name} keeps float32 master weights; dtype must be 'float32', "
                             f"got {dtype_name!r}")
        reason = _MISSING_DTYPE.get((backend.name, self.compute_dtype))
        compute = getattr(backend.xp, self.compute_dtype, None) if reason is None else None
        if compute is None:
            reason = reason or f"its namespace has no {self.compute_dtype}"
            raise ValueError(f"precision={self.name!r} is not available on backend "
                             f"{backend.name!r}: {reason}")
        self.backend, self.xp, self.compute = backend, backend.xp, compute
        self.master = backend.xp.float32
        self._copies = {}
        return self

    # -- casts -------------------------------------------------------------------------------------
    def _cast(self, x: Any, dtype: Any) -> Any:
        return x if x.dtype == dtype else self.xp.astype(x, dtype)

    @contextmanager
    def _compute_weights(self, structure: Any) -> Iterator[None]:
        """Put 16-bit copies of the master weights into the layers for the duration."""
        masters = []
        for layer, key in structure.slots:
            master = layer.params[key]
            masters.append(master)
            if layer.keep_float32:
                continue
            cached = self._copies.get((id(layer), key))
            if cached is None or cached[0] is not master:
                cached = (master, self.xp.astype(master, self.compute))
                self._copies[(id(layer), key)] = cached
            layer.params[key] = cached[1]
        try:
            yield
        finally:
            for (layer, key), master in zip(structure.slots, masters, strict=True):
                layer.params[key] = master

    # -- the phases of a step (called by bpgpu._engine and the Network) ----------------------------
    def forward(self, structure: Any, x: Any, training: bool) -> Any:
        """The network's output for ``x``, computed in the compute dtype, returned in float32."""
        with self._compute_weights(structure):
            x = self._cast(x, self.compute)
            for layer in structure.layers:
                x = layer.forward(x, training=training)
        return self._cast(x, self.master)

    def backward_scale(self) -> float:
        """The factor dL/dout is multiplied by before the 16-bit backward pass (and the gradients
        divided by after it): the loss scale S times :attr:`batch_fraction`, 1.0 without a scaler.

        A process of a data-parallel fit averages its loss over its n_r rows, where one process
        with the whole global batch averages over G: its dL/dout rows are G / n_r times larger.
        Scaling them by S n_r / G makes every row's 16-bit gradient the one the single process
        computes, so overflow, and with it the skipped steps and the scale sequence, come out
        the same."""
        return 1.0 if self.scaler is None else self.scaler.scale * self.batch_fraction

    def backward(self, structure: Any, dy: Any, layers: Sequence[Any]) -> Any:
        """Backpropagate dL/dout ``dy`` (float32) through ``layers`` in the compute dtype, scaled
        by :meth:`backward_scale`; leaves unscaled float32 gradients in the layers. Returns the
        unscaled float32 dL/dX, or None."""
        scale = self.backward_scale()
        for layer in structure.penalized:
            layer.loss_scale = scale
        try:  # overflow is expected here (the scaler handles it): no NumPy warnings for it
            with self._compute_weights(structure), np.errstate(over="ignore", invalid="ignore"):
                dy = self._cast(dy * scale, self.compute)
                for layer in reversed(layers):
                    dy = layer.backward(dy)
        finally:
            for layer in structure.penalized:
                layer.loss_scale = 1.0
        unscale = 1.0 / scale
        with np.errstate(invalid="ignore"):
            for layer, key in structure.slots:
                g = self._cast(layer.grads[key], self.master)
                layer.grads[key] = g * unscale if scale != 1.0 else g
            if dy is not None:
                dy = self._cast(dy, self.master)
                dy = dy * unscale if scale != 1.0 else dy
        return dy

    def allow_update(self, grads: Sequence[Any]) -> bool:
        """Whether the optimizer may apply ``grads`` (the unscaled float32 gradients, a list of
        arrays): False when one holds inf or NaN. Moves the loss scale; one device read. Always
        True without a scaler."""
        if self.scaler is None:
            return True
        xp = self.xp
        finite = bool(xp.all(xp.stack([xp.all(xp.isfinite(g)) for g in grads])))
        self.scaler.update(not finite)
        return finite

    def use_kernel_check(self, found_inf: Any) -> None:
        """The fast mixed step's unscale kernel has checked this step's gradient: ``found_inf``
        is its device flag (nonzero: an inf or NaN). The next :meth:`gradient_hook` reads it
        (one device read) instead of scanning the gradient."""
        self._found_inf = found_inf

    def gradient_hook(self, flat_grads: Any, rows: int) -> bool:
        """The network's gradient hook (:mod:`bpgpu._engine`): :meth:`allow_update` on the
        flat gradient, after any hook before it (a distributed fit's all-reduce comes first, so
        every rank decides alike); or the kernel's flag (:meth:`use_kernel_check`)."""
        found, self._found_inf = self._found_inf, None
        if found is None or self.scaler is None:
            return self.allow_update([flat_grads])
        bad = bool(int(found[0]))
        self.scaler.update(bad)
        return not bad

    # -- state -------------------------------------------------------------------------------------
    def epoch_logs(self, skipped_before: int) -> dict[str, float]:
        """History entries for an epoch that began with ``skipped_before`` skipped steps."""
        if self.scaler is None:
            return {}
        return {"loss_scale": self.scaler.scale,
                "skipped_steps": self.scaler.skipped_steps - skipped_before}

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (``{}`` without one): part of a checkpoint."""
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state)


def get_precision(precision: MixedPrecision | str | None) -> MixedPrecision | None:
    """None, or a fresh :class:`MixedPrecision` for ``"mixed_float16"`` / ``"mixed_bfloat16"``,
    or the given MixedPrecision object itself."""
    if precision is None or isinstance(precision, MixedPrecision):
        return precision
    if isinstance(precision, str) and precision in PRECISIONS:
        return MixedPrecision(PRECISIONS[precision])
    raise ValueError(f"precision must be None, {', '.join(map(repr, PRECISIONS))} or a "
                     f"MixedPrecision object, got {precision!r}")


def serialize_precision(policy: MixedPrecision | None) -> dict[str, Any] | None:
    """A JSON-safe description of ``policy`` (None stays None)."""
    if policy is None:
        return None
    scaler = None if policy.scaler is None else policy.scaler.get_config()
    return {"compute_dtype": policy.compute_dtype, "loss_scale": scaler}


def deserialize_precision(spec: Any) -> MixedPrecision | None:
    """Inverse of :func:`serialize_precision`; ValueError for anything else."""
    if spec is None:
        return None
    try:
        scaler = spec["loss_scale"]
        return MixedPrecision(spec["compute_dtype"],
                              None if scaler is None else LossScaler(**scaler))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a precision description: {spec!r} ({exc})") from None
