"""A chain of records applied one after another: what a Keras ``SeparableConv*D`` is (depthwise, then pointwise).

>>> import numpy as np
>>> from layoutconv import Conv
>>> depthwise = Conv(np.ones((6, 1, 3)), groups=3)        # 3 channels, depth multiplier 2
>>> pointwise = Conv(np.ones((4, 6, 1)), np.zeros(4))
>>> Chain((depthwise, pointwise))
Chain(Conv1D(in_channels=3, out_channels=6, kernel_size=3, groups=3, padding='valid', bias=False, dtype=float64) -> Conv1D(in_channels=6, out_channels=4, kernel_size=1, padding='valid', bias=True, dtype=float64))

The whole-model work reuses it for any straight run of layers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, ShapeError, fail
from .record import Record


class Chain(Record):
    """Records applied in order; each one's output channels feed the next one's input channels."""

    __slots__ = ("layers",)
    FIELDS = ("layers",)

    layers: tuple[Any, ...]

    def __init__(self, layers: Sequence[Any]) -> None:
        layers = tuple(layers)
        if len(layers) < 1 or not all(isinstance(layer, Record) for layer in layers):
            raise fail(
                ConfigError, "A Chain needs records", "a non-empty sequence of layoutconv records",
                f"{[type(layer).__name__ for layer in layers]}",
            )
        for a, b in zip(layers, layers[1:]):
            if a.out_channels != b.in_channels or getattr(a, "spatial_rank", None) != getattr(b, "spatial_rank", None):
                raise fail(
                    ShapeError,
                    "Consecutive layers of a Chain do not fit",
                    "each layer's out_channels (and spatial rank) equal to the next one's in_channels",
                    f"{a!r} -> {b!r}",
                )
        self._set("layers", layers)

    def same_weights(self, other: Record) -> bool:
        return isinstance(other, Chain) and len(self.layers) == len(other.layers) and all(
            a.same_weights(b) for a, b in zip(self.layers, other.layers)
        )

    def equivalent(self, other: Any, spatial: Any = None) -> bool:
        """Every layer equivalent to the other chain's (pads compared for the first layer's input size only)."""
        return isinstance(other, Chain) and len(self.layers) == len(other.layers) and all(
            a.equivalent(b, spatial if i == 0 else None) for i, (a, b) in enumerate(zip(self.layers, other.layers))
        )

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].dtype

    @property
    def spatial_rank(self) -> int:
        return self.layers[0].spatial_rank

    @property
    def in_channels(self) -> int:
        return self.layers[0].in_channels

    @property
    def out_channels(self) -> int:
        return self.layers[-1].out_channels

    @property
    def receptive_field(self) -> tuple[int, ...]:
        return self.layers[0].receptive_field

    @property
    def stride(self) -> tuple[int, ...]:
        return self.layers[0].stride

    def hyperparameters(self) -> dict[str, Any]:
        """Each layer's hyperparameters, in order (``Report.to_dict`` and ``--json`` show them)."""
        return {"layers": [dict(kind=type(layer).__name__, **layer.hyperparameters()) for layer in self.layers]}

    def output_shape(self, spatial: Any) -> tuple[int, ...]:
        """Spatial size after every layer."""
        for layer in self.layers:
            spatial = layer.output_shape(spatial)
        return tuple(spatial)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chain):
            return NotImplemented
        return self.layers == other.layers

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Chain({' -> '.join(repr(layer) for layer in self.layers)})"
