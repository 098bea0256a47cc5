"""Training the way it is done for real work: validation, early stopping, a schedule, checkpoints.

scikit-learn's breast-cancer data set (569 tumours, 30 measurements, malignant or benign): 25 %
held out for the final test; of the rest, the last 20 % validate every epoch
(``validation_split=0.2``). A 30-32-16-1 ReLU network outputs a logit, trained with binary
cross-entropy and Adam whose rate warms up linearly for 5 epochs, then follows a cosine to zero.
EarlyStopping watches the validation loss and puts back the best epoch's weights;
ModelCheckpoint keeps that epoch's full training state on disk (``fit`` can continue from it);
CSVLogger writes one row per epoch. Saves the training curves (loss, accuracy, learning rate).

    python examples/train_with_callbacks.py                 # backend "auto": the GPU if CuPy sees one
    python examples/train_with_callbacks.py --backend torch
"""

import os
import time

import numpy as np

import bpgpu
from bpgpu.callbacks import CSVLogger, EarlyStopping, ModelCheckpoint
from bpgpu.optimizers import Adam
from bpgpu.schedules import CosineAnnealingLR, LinearWarmup

from _common import parse_args


def load_data(seed):
    """(X_train, X_test, y_train, y_test), features standardised with training statistics."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    X_train, X_test, y_train, y_test = train_test_split(
        data.data, data.target.astype(np.float32), test_size=0.25, stratify=data.target,
        random_state=seed)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    return (X_train - mean) / std, (X_test - mean) / std, y_train, y_test


def main():
    args = parse_args(__doc__.splitlines()[0], epochs=100)
    os.makedirs(args.out, exist_ok=True)
    X_train, X_test, y_train, y_test = load_data(args.seed)
    schedule = LinearWarmup(5, CosineAnnealingLR(3e-3, T_max=args.epochs))
    net = bpgpu.Network.from_sizes([30, 32, 16, 1], activation="relu", loss="bce_with_logits",
                                   optimizer=Adam(lr=schedule), backend=args.backend,
                                   seed=args.seed)
    print(f"backend: {net.backend.name} ({net.backend.reason})")
    checkpoint = os.path.join(args.out, "breast_cancer_best.npz")
    early = EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)
    callbacks = [early, ModelCheckpoint(checkpoint, monitor="val_loss", save_best_only=True),
                 CSVLogger(os.path.join(args.out, "breast_cancer_log.csv"))]
    start = time.perf_counter()
    history = net.fit(X_train, y_train, epochs=args.epochs, batch_size=32, validation_split=0.2,
                      metrics=["accuracy"], callbacks=callbacks, verbose=1)
    seconds = time.perf_counter() - start
    stopped = "" if early.stopped_epoch is None else f", stopped early after epoch {early.stopped_epoch + 1}"
    print(f"trained {len(history)} epochs in {seconds:.1f} s{stopped}; best validation loss "
          f"{early.best:.4f} at epoch {early.best_epoch + 1} (weights restored)")
    result = net.evaluate(X_test, y_test)
    print(f"test accuracy: {result['accuracy']:.4f}  (test loss {result['loss']:.4f})")
    best = bpgpu.load(checkpoint, backend=args.backend)
    print(f"checkpoint {checkpoint}: epoch {best.epoch}, test accuracy "
          f"{best.evaluate(X_test, y_test)['accuracy']:.4f}; best.fit(...) would continue from there")
    path = os.path.join(args.out, "breast_cancer_curves.png")
    net.history.plot(path)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
