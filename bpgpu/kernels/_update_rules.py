"""Which optimizers have an update rule over flat buffers, shared by every kernel set.

A kernel set (NumPy's, CuPy's) implements each rule named here in its own way; this table says
which optimizer uses which rule and which configuration keys the rule knows. An optimizer class
outside the table (exact class match: a subclass may change the rule), or one grown a
configuration key its rule does not know, keeps its reference ``_update`` over the flat buffer's
views: slower, never wrong.
"""

from __future__ import annotations

from ..optimizers import SGD, Adam, AdamW, Optimizer, RMSprop

__all__ = ["FLAT_RULES", "flat_rule_name"]

_CLIPPING = {"lr", "clip_norm", "clip_value"}

#: Exact optimizer class -> (rule name, configuration keys the rule implements).
FLAT_RULES: dict[type, tuple[str, frozenset[str]]] = {
    SGD: ("sgd", frozenset(_CLIPPING | {"momentum", "dampening", "weight_decay", "nesterov"})),
    RMSprop: ("rmsprop", frozenset(_CLIPPING | {"alpha", "eps", "weight_decay", "momentum",
                                                "centered"})),
    Adam: ("adam", frozenset(_CLIPPING | {"betas", "eps", "weight_decay"})),
    AdamW: ("adam", frozenset(_CLIPPING | {"betas", "eps", "weight_decay"})),
}


def flat_rule_name(optimizer: Optimizer) -> str | None:
    """The name of the flat rule serving ``optimizer`` (``"sgd"``, ``"rmsprop"``, ``"adam"``), or
    None when its reference rule must run."""
    entry = FLAT_RULES.get(type(optimizer))
    if entry is None or not set(optimizer.get_config()) <= entry[1]:
        return None
    return entry[0]
