"""Detection with the plugin's backbones through mmdet.

Import with ``custom_imports = dict(imports=['mmseg_didb.integrations.
mmdet'])`` (configs/det/ do), then use ``type='mmseg.DIDBSwin'`` /
``'mmseg.DIDBViT'`` as the detector's backbone (and the plugin's
``mmseg.BinaryMultiLevelNeck`` or mmdet's FPN as its neck).

mmdet imports ``mmcv.ops`` throughout; with mmcv-lite (the tested stack) the
plugin's placeholder for the compiled ops makes that import work
(:func:`mmseg_didb.compat.install_mmcv_ext_placeholder`): training of
anchor-based one-stage detectors (RetinaNet, FCOS) and test-time NMS run on
CPU (NMS through torchvision), while an op with no fallback (RoIAlign of
two-stage detectors, deformable convs, CARAFE, ...) raises
``MissingCompiledOpError`` naming the op when it is called.
"""
import mmseg_didb  # noqa: F401  registers the backbones, installs the ops
import mmdet.models  # noqa: F401,E402  mmdet's registry, after the fixes

__all__: list = []
