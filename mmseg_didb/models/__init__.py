from . import backbones, decode_heads, layers, necks, segmentors  # noqa: F401
