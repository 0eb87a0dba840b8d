from .binary_mlp import BinaryMlp
from .diba import DIBAggregation
from .didb_attention import DIDBAttention, legacy_attention_key
from .hfsc import HFSCSimilarity
from .tokens import (from_windows, to_windows, window_attention_mask,
                     window_partition, window_reverse)
from .transformer_block import DIDBBlock

__all__ = [
    'BinaryMlp', 'DIDBAttention', 'HFSCSimilarity', 'DIBAggregation',
    'DIDBBlock', 'legacy_attention_key', 'window_partition', 'window_reverse',
    'window_attention_mask', 'to_windows', 'from_windows'
]
