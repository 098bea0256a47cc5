"""Saving: the old file's permissions survive a replace, errors name the destination, an
interrupted save leaves no temporary file, and a layer that could not be rebuilt at load time
is refused at save time (with nothing written)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Layer, ReLU


def _net():
    return bpgpu.Network([Dense(3, 4), ReLU(), Dense(4, 1)], backend="numpy", seed=0)


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "private.npz"
    _net().save(path)
    os.chmod(path, 0o600)
    _net().save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    os.chmod(path, 0o640)
    _net().save(path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["private.npz"]


def test_errors_name_the_destination_not_the_temporary_file(tmp_path):
    missing = tmp_path / "no-such-folder" / "m.npz"
    with pytest.raises(FileNotFoundError) as info:
        _net().save(missing)
    assert str(missing) in str(info.value) and ".tmp" not in str(info.value)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        _net().save(folder)
    assert str(folder) in str(info.value) and ".tmp" not in str(info.value)
    assert os.listdir(tmp_path) == ["a-folder"] and os.listdir(folder) == []


_SAVE_FOREVER = textwrap.dedent("""
    import sys
    import bpgpu
    from bpgpu.layers import Dense
    net = bpgpu.Network([Dense(300, 1000), Dense(1000, 300)], backend="numpy", seed=0)
    print("ready", flush=True)
    while True:
        net.save(sys.argv[1])
""")


def test_sigterm_during_a_save_removes_the_temporary_file(tmp_path):
    """A process killed by SIGTERM while saving in a loop leaves only complete checkpoints:
    the handler bpgpu installs for the save removes the temporary file, then the signal's
    default action ends the process as SIGTERM would have."""
    target = tmp_path / "m.npz"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(target)],
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        while not target.exists():  # at least one save completed, others under way
            pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.stdout.close()
    assert os.listdir(tmp_path) == ["m.npz"]
    assert bpgpu.load(target, backend="numpy").n_params == 300 * 1000 + 1000 + 1000 * 300 + 300


class NoConfig(Layer):
    """y = x * k, but get_config() forgets ``k``: it cannot be rebuilt from a file."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x, training=False):
        return x * self.k

    def backward(self, dy):
        return dy * self.k


class LossyConfig(NoConfig):
    """Rebuilds, but with another ``k`` than the one in use."""

    def get_config(self):
        return {"k": 1.0}


class NotJSON(NoConfig):
    def get_config(self):
        return {"k": np.arange(2)}


@pytest.mark.parametrize("layer, fragment", [
    (NoConfig(2.0), "NoConfig.from_config(get_config()) fails"),
    (LossyConfig(2.0), "gives a different layer (k differ)"),
    (NotJSON(2.0), "not JSON-serialisable"),
], ids=["missing-argument", "lossy", "not-json"])
def test_a_layer_that_cannot_be_rebuilt_fails_at_save(tmp_path, layer, fragment):
    net = bpgpu.Network([Dense(3, 2), layer], backend="numpy", seed=0)
    with pytest.raises(ValueError, match="cannot save") as info:
        net.save(tmp_path / "m.npz")
    assert fragment in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_layer_class_shadowed_by_a_same_named_one_fails_at_save(tmp_path):
    """Two classes named alike: the file could only ever rebuild the one registered last."""
    def make():
        class Twin(Layer):
            def forward(self, x, training=False):
                return x

            def backward(self, dy):
                return dy
        return Twin

    first, _second = make(), make()
    net = bpgpu.Network([Dense(3, 2), first()], backend="numpy", seed=0)
    with pytest.raises(ValueError, match="registered as 'Twin' is another class"):
        net.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_a_callback_state_that_is_not_json_fails_at_save(tmp_path):
    from bpgpu.callbacks import Callback

    class Remembers(Callback):
        def state_dict(self):
            return {"seen": np.float32(1.0)}

    net = _net()
    net.fit(np.ones((4, 3)), np.ones((4, 1)), epochs=1, verbose=0, callbacks=[Remembers()])
    with pytest.raises(ValueError, match="state_dict"):
        net.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []
