"""Export: state_dict(format="torch") loads into the equivalent torch.nn modules (outputs equal to
1e-12 in float64); safetensors files we write are read by the safetensors package and torch, and
files from torch load into our networks; the reader rejects malformed files and changes nothing."""

import json
import struct

import numpy as np
import pytest

import bpgpu
from bpgpu.errors import ModelFileError
from bpgpu.export import load_safetensors, load_state_dict, read_safetensors, save_safetensors
from bpgpu.layers import (
    GELU,
    AvgPool2D,
    BatchNorm,
    Checkpoint,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    MaxPool2D,
    ReLU,
    Residual,
    Sequential,
    Tanh,
)


def _cnn_layers():
    return [
        Conv2D(2, 6, 3, padding=1, dilation=1), BatchNorm(6), ReLU(),
        Residual(Sequential([Conv2D(6, 6, 3, padding=2, dilation=2, groups=3, bias=False),
                             BatchNorm(6), GELU()])),
        MaxPool2D(2, padding=1),
        Checkpoint(Sequential([Conv2D(6, 4, 1), Tanh()])),
        AvgPool2D(2), Flatten(), Dropout(0.2), Dense(4 * 2 * 2, 8), BatchNorm(8),
        GELU(approximate="tanh"), LayerNorm(8), Dense(8, 3),
    ]


def _torch_module(torch, layer, flat=False):
    """The torch.nn module equivalent to one of our layers (the oracle's architecture);
    ``flat``: the layer sees (N, features) rather than images (BatchNorm1d, not 2d)."""
    nn = torch.nn

    class TorchResidual(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return x + self.block(x)

    if isinstance(layer, Sequential):
        return nn.Sequential(*[_torch_module(torch, child) for child in layer.layers])
    if isinstance(layer, Residual):
        return TorchResidual(_torch_module(torch, layer.block))
    if isinstance(layer, Checkpoint):
        return _torch_module(torch, layer.block)
    if isinstance(layer, Conv2D):
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, layer.dilation, layer.groups, bias=layer.bias)
    if isinstance(layer, Dense):
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    if isinstance(layer, BatchNorm):
        return (nn.BatchNorm1d if flat else nn.BatchNorm2d)(layer.num_features, layer.eps,
                                                            layer.momentum)
    if isinstance(layer, LayerNorm):
        return nn.LayerNorm(layer.normalized_shape, layer.eps)
    if isinstance(layer, MaxPool2D):
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, AvgPool2D):
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                            count_include_pad=layer.count_include_pad)
    if isinstance(layer, GELU):
        return nn.GELU(approximate=layer.approximate)
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p)
    return {ReLU: nn.ReLU, Tanh: nn.Tanh, Flatten: nn.Flatten}[type(layer)]()


def _torch_twin(torch, net):
    modules, flat = [], False
    for layer in net.layers:
        flat = flat or isinstance(layer, Flatten)
        modules.append(_torch_module(torch, layer, flat))
    return torch.nn.Sequential(*modules).double()


def _trained_cnn(backend="numpy", seed=0):
    """A small CNN after a few training steps (BatchNorm running statistics moved)."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((12, 2, 6, 6)), rng.integers(0, 3, 12)
    net = bpgpu.Network(_cnn_layers(), loss="cross_entropy", backend=backend, dtype="float64",
                        seed=seed, input_shape=(2, 6, 6))
    net.fit(X, y, epochs=2, batch_size=6, verbose=0)
    return net, X


def _as_torch(torch, state):
    return {name: torch.from_numpy(np.array(value)) for name, value in state.items()}


def test_torch_state_dict_loads_into_the_equivalent_torch_modules(torch):
    net, X = _trained_cnn()
    state = net.state_dict(format="torch")
    model = _torch_twin(torch, net)
    assert list(state) == list(model.state_dict())  # same names, in torch's order
    model.load_state_dict(_as_torch(torch, state), strict=True)
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-12, atol=1e-12)
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert int(state["1.num_batches_tracked"]) == net.optimizer.step_count == 4
    assert state["9.weight"].shape == (8, 16)  # Linear: (out, in)
    assert "3.block.0.weight" in state and "3.block.0.bias" not in state
    assert "5.0.weight" in state  # Checkpoint adds no name of its own


def test_state_dict_is_the_same_on_every_backend(backend):
    net = bpgpu.Network([Dense(3, 4), BatchNorm(4), ReLU(), Dense(4, 2)], backend=backend,
                        dtype="float64", seed=5)
    ref = bpgpu.Network([Dense(3, 4), BatchNorm(4), ReLU(), Dense(4, 2)], backend="numpy",
                        dtype="float64", seed=5)
    ours, theirs = net.state_dict(), ref.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert isinstance(ours[name], np.ndarray)
        np.testing.assert_array_equal(ours[name], theirs[name])
    np.testing.assert_array_equal(ours["0.weight"], ref.get_weights()[0].T)


def test_torch_weights_load_into_our_network(torch):
    """The other direction: a torch model's state_dict sets our weights (torch -> bpgpu)."""
    net, X = _trained_cnn(seed=1)
    model = _torch_twin(torch, net)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buffer.normal_()
    model.eval()
    net.load_state_dict(model.state_dict())  # CPU tensors are read as arrays
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-12, atol=1e-12)


def test_load_state_dict_rejects_what_does_not_fit_and_changes_nothing():
    net, X = _trained_cnn()
    before, out = net.get_weights(), net.predict(X)
    good = net.state_dict()
    bad_cases = {
        "missing": ({k: v for k, v in good.items() if k != "0.weight"}, r"missing \['0.weight'\]"),
        "unexpected": ({**good, "extra": np.zeros(1)}, r"unexpected \['extra'\]"),
        "shape": ({**good, "9.weight": good["9.weight"].T}, r"9.weight has shape \(16, 8\)"),
        "nan": ({**good, "13.bias": np.full(3, np.nan)}, "13.bias contains NaN"),
        "ints": ({**good, "13.bias": np.zeros(3, dtype=np.int64)}, "expected floats"),
    }
    for state, match in bad_cases.values():
        with pytest.raises(ValueError, match=match):
            load_state_dict(net, state)
    with pytest.raises(ValueError, match=r"format must be one of \('torch',\)"):
        net.state_dict(format="keras")
    for a, b in zip(net.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(net.predict(X), out)


# -- safetensors ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def safetensors():
    return pytest.importorskip("safetensors", reason="the safetensors package is not installed; "
                               "it is the independent reader of our files (pip install safetensors)")


def test_safetensors_file_reads_back_with_the_safetensors_package_and_torch(tmp_path, torch,
                                                                             safetensors):
    from safetensors import safe_open
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    net, X = _trained_cnn()
    path = tmp_path / "cnn.safetensors"
    net.save_safetensors(path, metadata={"framework": "bpgpu", "classes": "3"})
    state = net.state_dict()
    read = load_numpy(str(path))
    assert set(read) == set(state)
    for name, value in state.items():
        assert read[name].dtype == value.dtype and read[name].shape == value.shape
        np.testing.assert_array_equal(read[name], value)
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"framework": "bpgpu", "classes": "3"}
    model = _torch_twin(torch, net)
    model.load_state_dict(load_torch(str(path)), strict=True)
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-12, atol=1e-12)
    header_size = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_size % 8 == 0


def test_safetensors_round_trip_into_a_fresh_network(tmp_path):
    net, X = _trained_cnn(seed=2)
    save_safetensors(net, tmp_path / "w.safetensors")
    fresh = bpgpu.Network(_cnn_layers(), loss="cross_entropy", dtype="float64", seed=9,
                          backend="numpy")
    assert load_safetensors(fresh, tmp_path / "w.safetensors") is None  # no metadata
    np.testing.assert_array_equal(fresh.predict(X), net.predict(X))


def test_float32_network_writes_f32(tmp_path):
    net = bpgpu.Network([Dense(3, 2)], backend="numpy", seed=0)
    net.save_safetensors(tmp_path / "f32.safetensors")
    tensors, metadata = read_safetensors(tmp_path / "f32.safetensors")
    assert metadata is None and tensors["0.weight"].dtype == np.float32
    raw = (tmp_path / "f32.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["0.weight"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}


def test_safetensors_from_torch_loads_into_our_network(tmp_path, torch, safetensors):
    from safetensors.torch import save_file

    net, X = _trained_cnn(seed=3)
    model = _torch_twin(torch, net)
    model.eval()
    save_file(model.state_dict(), str(tmp_path / "torch.safetensors"), metadata={"from": "torch"})
    assert load_safetensors(net, tmp_path / "torch.safetensors") == {"from": "torch"}
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-12, atol=1e-12)


def _file(header, data=b"", header_size=None, pad=True):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        raw += b" " * (-len(raw) % 8)
    size = len(raw) if header_size is None else header_size
    return struct.pack("<Q", size) + raw + data


_ENTRY = {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}
MALFORMED = {
    "too short": (b"\x01\x02", "fewer than the 8-byte header length"),
    "huge header length": (struct.pack("<Q", 2**62) + b"{}", "header length 4611686018427387904"),
    "header past the end": (_file({}, header_size=4096), "header length 4096 exceeds"),
    "not json": (_file(b"{nope"), "its header is not JSON"),
    "not an object": (_file([1, 2]), "not a JSON object"),
    "bad dtype": (_file({"a": {**_ENTRY, "dtype": "F128"}}, bytes(16)), "dtype 'F128'"),
    "negative shape": (_file({"a": {**_ENTRY, "shape": [-2]}}, bytes(16)), "non-negative"),
    "extra key": (_file({"a": {**_ENTRY, "x": 1}}, bytes(16)), "exactly dtype, shape"),
    "offsets past the data": (_file({"a": {**_ENTRY, "data_offsets": [0, 1 << 40]}}, bytes(16)),
                              "outside the 16 data bytes"),
    "size mismatch": (_file({"a": {**_ENTRY, "shape": [3]}}, bytes(16)), "does not take 16 bytes"),
    "overlap": (_file({"a": _ENTRY, "b": _ENTRY}, bytes(16)), "without gaps or overlaps"),
    "gap": (_file({"a": {**_ENTRY, "data_offsets": [8, 24]}}, bytes(24)), "starts at byte 8"),
    "trailing bytes": (_file({"a": _ENTRY}, bytes(32)), "cover 16 of the 32 data bytes"),
    "bad metadata": (_file({"__metadata__": {"a": 1}}), "__metadata__ must map strings"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_reader_rejects_malformed_files(tmp_path, case):
    content, match = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        read_safetensors(path)


def test_a_file_for_another_network_is_rejected_and_changes_nothing(tmp_path):
    net, X = _trained_cnn()
    other = bpgpu.Network([Dense(3, 2)], backend="numpy", seed=0)
    other.save_safetensors(tmp_path / "other.safetensors")
    out = net.predict(X)
    with pytest.raises(ModelFileError, match="does not fit this network: missing"):
        load_safetensors(net, tmp_path / "other.safetensors")
    np.testing.assert_array_equal(net.predict(X), out)
    with pytest.raises(FileNotFoundError):
        read_safetensors(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="metadata must be a dict of str -> str"):
        net.save_safetensors(tmp_path / "m.safetensors", metadata={"epochs": 3})
    assert not (tmp_path / "m.safetensors").exists()


def test_the_guide_page_examples_run_in_order(tmp_path, monkeypatch, torch, safetensors):
    """Every Python block of docs/guide/layers-from-pytorch.md, in order, in one namespace;
    the exported torch model must reproduce the network's outputs."""
    import re
    from pathlib import Path

    page = Path(__file__).parents[1] / "docs" / "guide" / "layers-from-pytorch.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    net, model = namespace["net"], namespace["model"]
    X = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-5, atol=1e-6)
