"""Process-wide on/off switches of the binary layers, set for a block."""
import contextlib
from typing import Iterator

__all__ = ['Switch']


class Switch:
    """A boolean that :meth:`set` changes inside a ``with`` block.

    Args:
        default: the value outside any block.
    """

    def __init__(self, default: bool) -> None:
        self.value = bool(default)

    def __bool__(self) -> bool:
        return self.value

    @contextlib.contextmanager
    def set(self, enabled: bool) -> Iterator[None]:
        """``enabled`` inside the block, the previous value after it."""
        previous = self.value
        self.value = bool(enabled)
        try:
            yield
        finally:
            self.value = previous
