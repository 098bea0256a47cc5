"""Layers: each a forward formula and its explicit backward pass (see :class:`Layer`)."""

from .activations import (
    ACTIVATIONS,
    GELU,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Swish,
    Tanh,
    get_activation,
)
from .base import Layer, deserialize_layer, layer_class, serialize_layer
from .containers import Checkpoint, Residual, Sequential
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .normalization import BatchNorm, LayerNorm
from .pooling import AvgPool2D, MaxPool2D
from .shape import Flatten, Reshape

__all__ = ["Layer", "Dense", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "Swish", "GELU",
           "Softmax", "Identity", "get_activation", "ACTIVATIONS", "serialize_layer",
           "deserialize_layer", "layer_class",
           "Dropout", "BatchNorm", "LayerNorm", "Sequential", "Residual", "Checkpoint", "Flatten",
           "Reshape", "Conv2D", "MaxPool2D", "AvgPool2D"]
