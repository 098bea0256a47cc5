"""Layers: each a forward formula and its explicit backward pass (see :class:`Layer`)."""

from .activations import (ACTIVATIONS, GELU, Identity, LeakyReLU, ReLU, Sigmoid, SiLU, Softmax,
                          Swish, Tanh, get_activation)
from .base import Layer, deserialize_layer, layer_class, serialize_layer
from .dense import Dense

__all__ = ["Layer", "Dense", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "Swish", "GELU",
           "Softmax", "Identity", "get_activation", "ACTIVATIONS", "serialize_layer",
           "deserialize_layer", "layer_class"]
