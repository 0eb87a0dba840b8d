"""Optimizer-wrapper constructor for ``compile=True`` training."""
import torch
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

__all__ = ['CompilableOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class CompilableOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor (same ``paramwise_cfg``) whose
    optimizer step runs eagerly under ``torch.compile``.

    With ``compile=True`` mmengine compiles ``train_step``, optimizer step
    included. Traced, the step fails on mmengine's ``paramwise_cfg`` groups
    (``ConfigDict`` objects: ``'UserDefinedDictVariable' object has no
    attribute 'items'``), and where it does not, the learning rate, a Python
    number that the schedulers change every iteration, is a guard of the
    graph, so every iteration would compile again. The forward and backward
    pass stay compiled. Registered in mmengine's root registry, so mmseg,
    mmdet and mmpretrain configs all find it: ``optim_wrapper = dict(
    constructor='CompilableOptimWrapperConstructor', ...)``.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        wrapper = super().__call__(model)
        optimizer = wrapper.optimizer
        optimizer.step = torch.compiler.disable(optimizer.step)
        return wrapper
