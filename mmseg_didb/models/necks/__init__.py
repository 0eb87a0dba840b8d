from .binary_multilevel_neck import BinaryMultiLevelNeck  # noqa: F401
