"""Training hooks for binary models."""
from typing import Dict, Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ..binary import set_binarization
from ..binary.switch import KINDS


@HOOKS.register_module()
class BinarizationSwitchHook(Hook):
    """Single-run form of ReActNet's two-step training.

    Each quantizer kind given an iteration is disabled (full precision)
    before that iteration and enabled from it on, e.g.
    ``dict(type='BinarizationSwitchHook', weights_on_iter=20000)`` trains
    with binary activations and FP weights for 20k iterations (step 1) and
    fully binary afterwards (step 2), in one run. The state is derived from
    ``runner.iter`` at the start of training, so resuming from a checkpoint
    on either side of the switch restores the right stage. Kinds left None
    are not touched. The two-config form (stage 1 config with
    ``model.binarize=dict(weights=False)``, stage 2 with ``load_from``) uses
    the same switch, :func:`mmseg_didb.binary.switch.set_binarization`.

    Args:
        weights_on_iter (int, optional): Iteration at which weight
            binarization turns on.
        activations_on_iter (int, optional): Same for activations.
        attention_on_iter (int, optional): Same for attention probabilities.
    """

    priority = 'NORMAL'

    def __init__(self,
                 weights_on_iter: Optional[int] = None,
                 activations_on_iter: Optional[int] = None,
                 attention_on_iter: Optional[int] = None) -> None:
        self.on_iters: Dict[str, int] = {}
        for kind, value in zip(
                KINDS,
                (weights_on_iter, activations_on_iter, attention_on_iter)):
            if value is None:
                continue
            if int(value) != value or value < 0:
                raise ValueError(
                    f'{kind}_on_iter must be a non-negative int, got {value}.')
            self.on_iters[kind] = int(value)
        if not self.on_iters:
            raise ValueError('BinarizationSwitchHook needs at least one of '
                             'weights_on_iter, activations_on_iter, '
                             'attention_on_iter.')
        self._state: Dict[str, bool] = {}

    def state_at(self, iteration: int) -> Dict[str, bool]:
        """Enabled flag of every managed kind at a training iteration."""
        return {k: iteration >= v for k, v in self.on_iters.items()}

    def _apply(self, runner, iteration: int) -> None:
        state = self.state_at(iteration)
        if state == self._state:
            return
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        set_binarization(model, **state)
        runner.logger.info(
            f'BinarizationSwitchHook: iter {iteration}: binarization '
            + ', '.join(f'{k}={"on" if v else "off"}'
                        for k, v in state.items()))
        self._state = state

    def before_train(self, runner) -> None:
        self._state = {}
        self._apply(runner, runner.iter)

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        self._apply(runner, runner.iter)


@HOOKS.register_module()
class PackedInferenceHook(Hook):
    """Run validation / testing on the bit-packed model.

    Before the test (or validation) loop, after the checkpoint is loaded,
    the runner's model is converted in place with
    :func:`mmseg_didb.deploy.convert_to_packed`: every binary linear and
    conv runs on XNOR-popcount kernels, the attention's ``Q K^T`` and
    ``Ab V`` on packed kernels, BatchNorms after binary convs are folded.
    ``tools/test.py CONFIG CKPT --packed`` adds this hook. Not for training
    runs (the packed model has no gradients): use it in test / val only.
    """

    priority = 'VERY_LOW'

    def _convert(self, runner) -> None:
        from ..deploy import convert_to_packed
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        if getattr(model, 'pack_report', None) is not None:
            return  # already converted (val after val)
        convert_to_packed(model, inplace=True)
        runner.logger.info('packed inference: ' +
                           model.pack_report.summary())

    def before_test(self, runner) -> None:
        self._convert(runner)

    def before_val(self, runner) -> None:
        train_loop = getattr(runner, '_train_loop', None)
        if train_loop is not None and not isinstance(train_loop, dict):
            raise RuntimeError('PackedInferenceHook converts the model for '
                               'inference; do not use it while training')
        self._convert(runner)
