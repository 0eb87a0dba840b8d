from .binary_encoder_decoder import BinaryEncoderDecoder
from .distill_encoder_decoder import DistillEncoderDecoder

__all__ = ['BinaryEncoderDecoder', 'DistillEncoderDecoder']
