"""Numbers, shapes and state at the API boundary: each bad input is a clear error with nothing
changed; each good one (NumPy scalars, masked arrays without masked entries, any iterable of
callbacks) works exactly as its plain Python equivalent."""

import gc
import threading
import warnings

import numpy as np
import pytest
from reliability_helpers import assert_same_state, network_state

import bpgpu
from bpgpu.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from bpgpu.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, LeakyReLU, ReLU, Sequential, Sigmoid, Tanh
from bpgpu.losses import BinaryCrossEntropy, CrossEntropy
from bpgpu.optimizers import SGD, Adam, RMSprop
from bpgpu.schedules import StepLR

RNG = np.random.default_rng(11)
X = RNG.normal(size=(20, 3))
Y = X[:, :1] * 0.5 - X[:, 2:3]


def _net(backend="numpy", dtype="float32", layers=None, **kwargs):
    layers = layers or [Dense(3, 5), Tanh(), Dropout(0.2), Dense(5, 1)]
    kwargs.setdefault("optimizer", Adam(lr=0.01))
    return bpgpu.Network(layers, backend=backend, dtype=dtype, seed=2, **kwargs)


def _unchanged(net, call, error, match):
    before = network_state(net)
    with pytest.raises(error, match=match):
        call()
    assert_same_state(network_state(net), before)


# -- numbers: finiteness after the cast ------------------------------------------------------
def test_values_that_overflow_float32_are_refused_everywhere(backend):
    net = _net(backend)
    net.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    big = X.copy()
    big[3, 1] = 1e39  # finite as float64, infinite as float32
    overflow = r"contains .*NaN or infinite value.*as float32, magnitudes above 3.4e\+38 overflow"
    for call in (lambda: net.predict(big), lambda: net.train_step(big, Y),
                 lambda: net.fit(big, Y, verbose=0), lambda: net.evaluate(big, Y),
                 lambda: net.compute_gradients(big, Y), lambda: net.train_step(X, Y * 1e39),
                 lambda: net.set_weights([w.astype(np.float64) * 1e300 for w in net.get_weights()])):
        _unchanged(net, call, ValueError, overflow)


def test_the_same_values_are_fine_in_float64(backend):
    if not backend.supports_float64:
        pytest.skip(f"{backend.name} on {backend.device} has no float64")
    net = _net(backend, "float64", layers=[Dense(3, 1)], optimizer=SGD(lr=1e-80))
    big = X * 1e39
    assert np.isfinite(net.predict(big)).all()
    assert np.isfinite(net.train_step(big, Y))


def test_masked_arrays_cannot_hide_values():
    net = _net()
    hidden = np.ma.masked_array(X.copy(), mask=np.zeros_like(X, dtype=bool))
    hidden.data[0, 0] = np.nan
    hidden.mask[0, 0] = True
    _unchanged(net, lambda: net.train_step(hidden, Y), ValueError, "masked array with masked entries")
    _unchanged(net, lambda: net.predict(hidden), ValueError, "fill them first")
    plain_mask = np.ma.masked_array(X)  # nothing masked: the data is used as is
    np.testing.assert_array_equal(net.predict(plain_mask), net.predict(X))
    nan_unmasked = np.ma.masked_array(np.where(X > 1, np.nan, X))
    _unchanged(net, lambda: net.predict(nan_unmasked), ValueError, "NaN or infinite")


def test_numpy_scalars_act_as_python_numbers():
    """Every hyper-parameter given as a NumPy scalar trains exactly as float(value) / int(value)."""
    def run(num, whole):
        layers = [Dense(whole(3), whole(6)), LeakyReLU(num(0.1)), BatchNorm(whole(6), momentum=num(0.2)),
                  Dropout(num(0.25)), Dense(whole(6), whole(1), l2=num(0.01))]
        nets = [bpgpu.Network(layers, optimizer=Adam(lr=StepLR(num(0.01), whole(2), gamma=num(0.5)),
                                                     betas=(num(0.8), num(0.99)), eps=num(1e-7)),
                              backend="numpy", seed=whole(4))]
        nets.append(bpgpu.Network([Dense(3, 2), Dense(2, 1)], backend="numpy", seed=4,
                                  optimizer=SGD(lr=num(0.05), momentum=num(0.5), clip_norm=num(1.0))))
        nets.append(bpgpu.Network([Dense(3, 1)], backend="numpy", seed=4,
                                  optimizer=RMSprop(lr=num(0.01), alpha=num(0.9))))
        histories = []
        for net in nets:
            callbacks = [EarlyStopping(monitor="val_loss", patience=whole(3), min_delta=num(1e-4)),
                         ReduceLROnPlateau(monitor="val_loss", factor=num(0.5), patience=whole(0),
                                           cooldown=whole(1)) if net is not nets[0] else Callback()]
            h = net.fit(X, Y, epochs=whole(4), batch_size=whole(6), validation_split=num(0.25),
                        callbacks=callbacks, verbose=whole(0))
            histories.append((h.history, net.get_weights()))
        return histories

    for np_num, np_whole in ((np.float32, np.int64), (np.float64, np.int32)):
        expected = run(lambda v, t=np_num: float(t(v)), int)
        np.testing.assert_equal(run(lambda v, t=np_num: t(v), np_whole), expected)


@pytest.mark.parametrize("make, name", [
    (lambda: _net().fit(X, Y, shuffle="no", verbose=0), "shuffle"),
    (lambda: EarlyStopping(restore_best_weights="no"), "restore_best_weights"),
    (lambda: ModelCheckpoint("m.npz", save_best_only=1), "save_best_only"),
    (lambda: CSVLogger("log.csv", append=None), "append"),
    (lambda: SGD(lr=0.1, momentum=0.9, nesterov="yes"), "nesterov"),
    (lambda: RMSprop(centered=1), "centered"),
    (lambda: Dense(3, 2, bias="no"), "Dense bias"),
    (lambda: Conv2D(1, 2, 3, bias=0), "Conv2D bias"),
    (lambda: BinaryCrossEntropy(from_logits="yes"), "from_logits"),
], ids=["shuffle", "restore_best_weights", "save_best_only", "append", "nesterov", "centered",
        "dense-bias", "conv-bias", "from_logits"])
def test_boolean_options_refuse_non_booleans(make, name):
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        make()


def test_numpy_booleans_are_booleans():
    assert EarlyStopping(restore_best_weights=np.True_).restore_best_weights is True
    assert Dense(3, 2, bias=np.False_).bias is False
    h = _net().fit(X, Y, shuffle=np.False_, epochs=1, verbose=0)
    assert len(h) == 1


# -- shapes and state -------------------------------------------------------------------------
def test_zero_row_batches_are_refused_with_nothing_changed(backend):
    net = _net(backend)
    net.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    empty_X, empty_Y = X[:0], Y[:0]
    for call in (lambda: net.train_step(empty_X, empty_Y), lambda: net.compute_gradients(empty_X, empty_Y),
                 lambda: net.evaluate(empty_X, empty_Y), lambda: net.fit(empty_X, empty_Y, verbose=0),
                 lambda: net.fit(X, Y, validation_data=(empty_X, empty_Y), verbose=0)):
        _unchanged(net, call, ValueError, "holds no samples")
    assert net.predict(empty_X).shape == (0, 1)  # predicting nothing is fine


def test_a_layer_used_twice_is_refused():
    shared = Dense(3, 3)
    with pytest.raises(ValueError, match="appears twice in this network"):
        bpgpu.Network([shared, ReLU(), shared], backend="numpy")
    relu = ReLU()
    with pytest.raises(ValueError, match="appears twice"):
        bpgpu.Network([Dense(3, 3), Sequential([relu, Dense(3, 3), relu])], backend="numpy")


def test_a_layer_of_another_network_is_refused_and_that_network_unchanged():
    first = _net()
    before = network_state(first)
    with pytest.raises(ValueError, match="already belongs to another Network"):
        bpgpu.Network([first.layers[0], Dense(5, 1)], backend="numpy", seed=9)
    assert_same_state(network_state(first), before)
    np.testing.assert_array_equal(first.predict(X), _net().predict(X))
    # a new layer with the same settings is free, and so is a layer whose network is gone
    twin = type(first.layers[0]).from_config(first.layers[0].get_config())
    bpgpu.Network([twin, Dense(5, 1)], backend="numpy")
    layer = first.layers[0]
    del first
    gc.collect()
    bpgpu.Network([layer, Dense(5, 1)], backend="numpy")


def test_callbacks_may_be_any_iterable():
    def gen():
        yield EarlyStopping(monitor="loss", patience=5)

    for callbacks in ((EarlyStopping(monitor="loss", patience=5),), gen(),
                      {"a": EarlyStopping(monitor="loss")}.values()):
        assert len(_net().fit(X, Y, epochs=2, callbacks=callbacks, verbose=0)) == 2
    for bad in (EarlyStopping(), "EarlyStopping", 3, [EarlyStopping(), print]):
        with pytest.raises(TypeError, match="callbacks must be a list of bpgpu.callbacks.Callback"):
            _net().fit(X, Y, callbacks=bad, verbose=0)


def test_cross_entropy_probability_targets_are_checked(torch):
    net = bpgpu.Network([Dense(3, 4)], loss=CrossEntropy(), backend="numpy", dtype="float64", seed=0)
    rows = np.full((20, 4), 0.25)
    _unchanged(net, lambda: net.train_step(X, rows - 0.3), ValueError, "must be >= 0")
    _unchanged(net, lambda: net.train_step(X, rows * 1.1), ValueError, "rows summing to 1")
    smooth = np.eye(4)[RNG.integers(0, 4, 20)] * 0.9 + 0.025  # label smoothing: rows sum to 1
    loss = net.evaluate(X, smooth)["loss"]
    logits = torch.tensor(net.predict(X))
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(smooth)).item()
    assert loss == pytest.approx(expected, rel=1e-12)


def test_batchnorm_one_sample_last_batch_is_refused_before_training():
    net = _net(layers=[Dense(3, 4), BatchNorm(4), ReLU(), Dense(4, 1)])
    for n, batch_size in ((9, 4), (1, 4), (5, None), (20, 19)):
        if n == 5:
            n = 1
        _unchanged(net, lambda n=n, size=batch_size: net.fit(X[:n], Y[:n], batch_size=size, verbose=0),
                   ValueError, "would hold 1 sample")
    nested = _net(layers=[Dense(3, 4), Sequential([BatchNorm(4), ReLU()]), Dense(4, 1)])
    _unchanged(nested, lambda: nested.fit(X[:9], Y[:9], batch_size=4, verbose=0), ValueError,
               "BatchNorm needs at least 2")
    net.fit(X[:10], Y[:10], batch_size=4, verbose=0)  # last batch of 2: fine
    # after a convolution a single image still gives H*W values per channel: allowed
    images = RNG.normal(size=(5, 1, 4, 4))
    conv = bpgpu.Network([Conv2D(1, 2, 3), BatchNorm(2), Flatten(), Dense(8, 1)],
                         backend="numpy", seed=0)
    assert len(conv.fit(images, images[:, 0, 0, :1], batch_size=4, verbose=0)) == 1


def test_compute_gradients_leaves_every_random_stream_alone(backend):
    net, twin = _net(backend), _net(backend)
    before = network_state(net)
    net.compute_gradients(X, Y)
    assert_same_state(network_state(net), before)
    net.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    twin.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    assert_same_state(network_state(net), network_state(twin))


def test_predict_from_another_thread_does_not_disturb_fit():
    """A thread predicting without pause while fit runs: training ends bit for bit where a
    run without the thread ends, and every prediction is finite."""
    layers = [Dense(3, 16), BatchNorm(16), Tanh(), Dropout(0.1), Dense(16, 1)]
    net = _net(layers=layers)
    twin = _net(layers=[Dense(3, 16), BatchNorm(16), Tanh(), Dropout(0.1), Dense(16, 1)])
    done, outputs = threading.Event(), []

    def predict_forever():
        while not done.is_set():
            outputs.append(net.predict(X[:7]))

    thread = threading.Thread(target=predict_forever)
    thread.start()
    try:
        net.fit(X, Y, epochs=30, batch_size=2, verbose=0)
    finally:
        done.set()
        thread.join()
    twin.fit(X, Y, epochs=30, batch_size=2, verbose=0)
    assert_same_state(network_state(net), network_state(twin))
    assert len(outputs) > 0 and all(np.isfinite(o).all() and o.shape == (7, 1) for o in outputs)


# -- mistakes users make -----------------------------------------------------------------------
@pytest.mark.parametrize("layers, loss, fragment", [
    ([Dense(3, 1)], "bce", "'bce' expects probabilities"),
    ([Dense(3, 1), Tanh()], "bce", "the last layer is Tanh"),
    ([Dense(3, 1), Sigmoid()], "bce_with_logits", "applied twice"),
    ([Dense(3, 1), Sigmoid()], BinaryCrossEntropy(from_logits=True), "applied twice"),
])
def test_a_loss_that_does_not_fit_the_output_warns(layers, loss, fragment):
    with pytest.warns(UserWarning, match=fragment):
        bpgpu.Network(layers, loss=loss, backend="numpy")


@pytest.mark.parametrize("layers, loss", [
    ([Dense(3, 1), Sigmoid()], "bce"),
    ([Dense(3, 1)], "bce_with_logits"),
    ([Dense(3, 1)], "mse"),
])
def test_fitting_losses_do_not_warn(layers, loss):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bpgpu.Network(layers, loss=loss, backend="numpy")
