"""The one exception the codec layer raises for bad input."""

from __future__ import annotations


class CodecError(ValueError):
    """A payload or PCM block the codec cannot take (empty, truncated, wrong size, garbage).

    The receive path counts it and conceals the frame; it never ends a call.
    """
