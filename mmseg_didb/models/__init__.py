from . import backbones, decode_heads, layers, necks, segmentors  # noqa: F401
from . import losses  # noqa: F401,E402
from . import registration  # noqa: F401,E402
