"""Declared input shapes, every layer's output shape and parameter count in summary(), and the
"add Flatten" advice; shapes checked against what forward really produces."""

import math

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import GELU, AvgPool2D, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Residual, Sequential


def _cnn():
    return [Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2),
            Residual(Sequential([Conv2D(4, 4, 3, padding=1, groups=4), BatchNorm(4), GELU()])),
            AvgPool2D(2, padding=1), Flatten(), Dense(4 * 3 * 3, 10)]


def _table_rows(text):
    """``[(layer text, output shape text, params)]`` from the summary's body rows."""
    lines = text.splitlines()
    body = lines[2:lines.index(lines[1], 2)]
    rows = []
    for line in body:
        head, count = line.rsplit(None, 1)
        layer, shape = head.rstrip().split("  (N, ") if "(N, " in head else (head.strip(), "?")
        rows.append((layer.rstrip(), shape.strip(), int(count.replace(",", ""))))
    return rows


def test_summary_lists_every_output_shape_and_parameter_count():
    net = bpgpu.Network(_cnn(), loss="cross_entropy", input_shape=(1, 8, 8), backend="numpy",
                        dtype="float64", seed=0)
    text = net.summary()
    rows = _table_rows(text)
    assert [r[0].strip() for r in rows] == [
        "Conv2D(1, 4, 3, padding=1)", "ReLU", "MaxPool2D(2)", "Residual", "Sequential",
        "Conv2D(4, 4, 3, padding=1, groups=4)", "BatchNorm(4)", "GELU", "AvgPool2D(2, padding=1)",
        "Flatten", "Dense(36, 10)"]
    # Every top-level output shape is what forward produces, layer by layer.
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    top = [r for r in rows if not r[0].startswith(" ")]
    for layer, (_, shape, count) in zip(net.layers, top, strict=True):
        x = layer.forward(x)
        assert shape == ", ".join(map(str, x.shape[1:])) + ")"
        assert count == sum(math.prod(p.shape) for sub in layer.walk() for p in sub.params.values())
    assert sum(r[2] for r in top) == net.n_params == 4 * 9 + 4 + 4 * 9 + 4 + 8 + 36 * 10 + 10
    assert "input (N, 1, 8, 8)" in text and f"{net.n_params:,} parameters" in text
    assert repr(text) == str(text)  # shows as the table at an interactive prompt


def test_summary_without_a_known_input_shape_marks_shapes_unknown():
    net = bpgpu.Network([Conv2D(1, 2, 3), ReLU()], backend="numpy", seed=0)
    rows = _table_rows(net.summary())
    assert [r[1] for r in rows] == ["?", "?"] and rows[0][2] == 2 * 9 + 2


def test_declared_input_shape_is_checked_against_the_data():
    net = bpgpu.Network(_cnn(), loss="cross_entropy", input_shape=(1, 8, 8), backend="numpy",
                        seed=0)
    assert net.input_shape == (1, 8, 8) and net.output_shape == (10,)
    assert net.predict(np.zeros((3, 1, 8, 8))).shape == (3, 10)
    with pytest.raises(ValueError, match=r"X has \(1, 9, 9\) features per sample; the network "
                                         r"expects \(1, 8, 8\)"):
        net.predict(np.zeros((3, 1, 9, 9)))


@pytest.mark.parametrize("bad", [(0, 8, 8), (1, 8.0, 8), "1x8x8", (), (True, 2)])
def test_rejects_malformed_input_shapes(bad):
    with pytest.raises(ValueError, match="input_shape must be the per-sample shape"):
        bpgpu.Network([Conv2D(1, 2, 3)], input_shape=bad, backend="numpy")


def test_input_shape_must_agree_with_a_first_dense_layer():
    assert bpgpu.Network([Dense(4, 2)], input_shape=4, backend="numpy").input_shape == (4,)
    shape = bpgpu.Network([Conv2D(1, 2, 3)], input_shape=np.array([1, 5, 5]).tolist(),
                          backend="numpy").input_shape
    assert shape == (1, 5, 5) and type(shape[0]) is int
    assert bpgpu.Network([Conv2D(1, 2, 3)], input_shape=tuple(np.array([1, 5, 5])),
                         backend="numpy").input_shape == (1, 5, 5)
    with pytest.raises(ValueError, match=r"input_shape \(5,\) does not match the first layer"):
        bpgpu.Network([Dense(4, 2)], input_shape=(5,), backend="numpy")


def test_impossible_geometry_is_rejected_before_any_layer_is_built():
    layers = [Conv2D(1, 2, 5), ReLU(), Flatten(), Dense(2, 1)]
    with pytest.raises(ValueError, match="kernel size 5 is larger than the padded input"):
        bpgpu.Network(layers, input_shape=(1, 3, 3), backend="numpy")
    assert not any(layer.built for layer in layers)  # a rejected call changes nothing


def test_dense_after_images_says_add_flatten():
    with pytest.raises(ValueError, match=r"Dense\(128, 10\) receives samples of shape "
                                         r"\(8, 4, 4\) but takes flat vectors of 128 features: "
                                         r"add Flatten\(\) before it"):
        bpgpu.Network([Conv2D(1, 8, 3, padding=1), MaxPool2D(2), Dense(128, 10)],
                      input_shape=(1, 8, 8), backend="numpy")
    # Without a declared shape, the first data says the same.
    net = bpgpu.Network([Conv2D(1, 8, 3, padding=1), MaxPool2D(2), Dense(128, 10)],
                        backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"add Flatten\(\) before it"):
        net.predict(np.zeros((2, 1, 8, 8)))
    layer = Dense(4, 2).build(bpgpu.get_backend("numpy"), np.float64, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"add Flatten\(\)"):
        layer.forward(np.zeros((3, 2, 2)))


def test_input_shape_survives_save_and_load(tmp_path):
    net = bpgpu.Network(_cnn(), loss="cross_entropy", input_shape=(1, 8, 8), backend="numpy",
                        seed=0)
    net.save(tmp_path / "cnn.npz")
    again = bpgpu.load(tmp_path / "cnn.npz")
    assert again.input_shape == (1, 8, 8) and again.output_shape == (10,)
    assert _table_rows(again.summary()) == _table_rows(net.summary())
