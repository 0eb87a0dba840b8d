"""The plugin's backbones in the other OpenMMLab toolboxes.

Each module is imported on demand, by a config's ``custom_imports`` (or by
``tools/train.py`` / ``tools/test.py`` when a config's ``default_scope`` is
that toolbox), so ``import mmseg_didb`` never pays for mmpretrain or mmdet:

- :mod:`mmseg_didb.integrations.mmpretrain`: classification pretraining of
  the binary backbones (``BinaryImageClassifier``: GRS, two-step switches,
  distillation from a frozen FP teacher);
- :mod:`mmseg_didb.integrations.mmdet`: detection with the backbones.

In both, a backbone is referred to as ``type='mmseg.DIDBSwin'`` /
``'mmseg.DIDBViT'`` (the registry scope of mmseg, where the plugin
registers them).
"""
