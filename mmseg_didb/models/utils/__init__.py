from .checkpoint import (UNSAFE_OPT_IN, CheckpointMismatchError,
                         CorruptCheckpointError, UnsafeCheckpointError,
                         load_checkpoint_strict, load_whole_checkpoint,
                         read_checkpoint, read_state_dict,
                         resolve_checkpoint_path, unwrap_state_dict)
from .config import package_config_path
from .swin_convert import convert_swin_state_dict, detect_swin_layout

__all__ = [
    'CheckpointMismatchError', 'CorruptCheckpointError',
    'UnsafeCheckpointError', 'UNSAFE_OPT_IN',
    'load_checkpoint_strict', 'load_whole_checkpoint', 'read_checkpoint',
    'read_state_dict',
    'resolve_checkpoint_path', 'unwrap_state_dict', 'convert_swin_state_dict',
    'detect_swin_layout', 'package_config_path'
]
