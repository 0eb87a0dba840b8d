"""Fixes 4 and 5 of :mod:`mmseg_didb.compat`: torch.distributed and AMP on a
machine without GPUs (see the package docstring for the upstream problems)."""
from __future__ import annotations

import importlib.util
from typing import Any, Callable, List

__all__ = ['patch_cpu_distributed', 'patch_cpu_amp']


# --------------------------------------------------------------------------
# 4. torch.distributed on CPU
# --------------------------------------------------------------------------
def _no_accelerator() -> bool:
    import torch
    from mmengine.device import (is_mlu_available, is_musa_available,
                                 is_npu_available)
    return not (torch.cuda.is_available() or is_npu_available()
                or is_mlu_available() or is_musa_available())


def _cpu_init_dist_pytorch(original: Callable) -> Callable:
    """mmengine's ``_init_dist_pytorch`` that, without any accelerator,
    starts a ``gloo`` process group and sets no device."""

    def init(backend: str = 'nccl', init_backend: str = 'torch',
             **kwargs: Any) -> None:
        if init_backend != 'torch' or not _no_accelerator():
            return original(backend, init_backend=init_backend, **kwargs)
        import torch.distributed as dist
        from mmengine.logging import print_log
        if backend != 'gloo':
            print_log(f'no GPU: torch.distributed uses the gloo backend '
                      f'instead of {backend!r} (mmseg_didb.compat)',
                      logger='current')
        dist.init_process_group(backend='gloo', **kwargs)

    init.__wrapped__ = original  # type: ignore[attr-defined]
    return init


def _sync_bn_layers(module: Any) -> List[str]:
    import torch
    return [name for name, m in module.named_modules()
            if isinstance(m, torch.nn.SyncBatchNorm)]


def _cpu_ddp_init(original: Callable) -> Callable:
    """``MMDistributedDataParallel.__init__`` that wraps a CPU module
    without device ids, and refuses SyncBatchNorm on CPU clearly."""

    def init(self: Any, module: Any, *args: Any, **kwargs: Any) -> None:
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        if on_cpu:
            sync = _sync_bn_layers(module)
            if sync:
                raise RuntimeError(
                    f'{len(sync)} SyncBatchNorm layers (e.g. {sync[0]}) '
                    'cannot run on the CPU: torch implements SyncBN for '
                    'GPUs only. For distributed training on CPU, use plain '
                    "BatchNorm: set every norm_cfg to dict(type='BN', "
                    "requires_grad=True), e.g. --cfg-options "
                    "model.decode_head.norm_cfg.type=BN "
                    'model.auxiliary_head.norm_cfg.type=BN (and the neck).')
            kwargs['device_ids'] = None
            kwargs.pop('output_device', None)
        original(self, module, *args, **kwargs)

    init.__wrapped__ = original  # type: ignore[attr-defined]
    return init


def patch_cpu_distributed() -> bool:
    """Lets mmengine's pytorch launcher and DDP wrapper run on CPU only
    machines (gloo, no device ids); unchanged with a GPU.

    Returns:
        bool: True if mmengine's functions were wrapped (False only when
        mmengine is not installed).
    """
    if importlib.util.find_spec('mmengine') is None:
        return False
    import mmengine.dist.utils as dist_utils
    from mmengine.model.wrappers.distributed import MMDistributedDataParallel
    if not hasattr(dist_utils._init_dist_pytorch, '__wrapped__'):
        dist_utils._init_dist_pytorch = _cpu_init_dist_pytorch(
            dist_utils._init_dist_pytorch)
    if not hasattr(MMDistributedDataParallel.__init__, '__wrapped__'):
        MMDistributedDataParallel.__init__ = _cpu_ddp_init(
            MMDistributedDataParallel.__init__)
    return True


# --------------------------------------------------------------------------
# 5. AMP on CPU (bfloat16)
# --------------------------------------------------------------------------
def _cpu_amp_init(original: Callable) -> Callable:
    """``AmpOptimWrapper.__init__`` that, without an accelerator, autocasts
    to bfloat16 with loss scaling off."""

    def init(self: Any, loss_scale: Any = 'dynamic', dtype: Any = None,
             use_fsdp: bool = False, **kwargs: Any) -> None:
        if not _no_accelerator():
            return original(self, loss_scale=loss_scale, dtype=dtype,
                            use_fsdp=use_fsdp, **kwargs)
        import torch
        from mmengine.logging import print_log
        from mmengine.optim import OptimWrapper
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(
                f'AMP on the CPU supports bfloat16 only, got dtype={dtype!r} '
                '(float16 needs a GPU): set optim_wrapper.dtype=\'bfloat16\' '
                'or leave it unset, or train without --amp')
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        # bfloat16 has float32's range: no loss scaling
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16
        print_log('no GPU: AMP autocasts to bfloat16 on the CPU, without '
                  'loss scaling (mmseg_didb.compat)', logger='current')

    init.__wrapped__ = original  # type: ignore[attr-defined]
    return init


def patch_cpu_amp() -> bool:
    """Lets mmengine's ``AmpOptimWrapper`` train in bfloat16 on CPU only
    machines; unchanged with a GPU.

    Returns:
        bool: True if the wrapper was patched (False only when mmengine is
        not installed).
    """
    if importlib.util.find_spec('mmengine') is None:
        return False
    from mmengine.optim import AmpOptimWrapper
    if not hasattr(AmpOptimWrapper.__init__, '__wrapped__'):
        AmpOptimWrapper.__init__ = _cpu_amp_init(AmpOptimWrapper.__init__)
    return True
