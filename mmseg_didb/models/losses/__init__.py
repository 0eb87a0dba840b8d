from .kd_loss import PixelKDLoss, pixel_kd_loss

__all__ = ['PixelKDLoss', 'pixel_kd_loss']
