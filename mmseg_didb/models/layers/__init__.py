from .binary_mlp import BinaryMlp
from .didb_attention import (DIDBAttention, from_windows, to_windows,
                             window_attention_mask, window_partition,
                             window_reverse)
from .transformer_block import DIDBBlock

__all__ = [
    'BinaryMlp', 'DIDBAttention', 'DIDBBlock', 'window_partition',
    'window_reverse', 'window_attention_mask', 'to_windows', 'from_windows'
]
