"""``compile=True``: a compiled training step of a binary segmentor equals
the eager one and compiles once, learning-rate changes included (the
optimizer-wrapper constructor of the binary schedules keeps the optimizer
step eager)."""
import mmseg_didb  # noqa: F401  (first: compat fixes)

import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from torch import nn
from torch._dynamo.utils import counters

from conftest import REPO_ROOT, tiny_segmentor
from mmseg_didb.analysis.benchmark import make_batch

init_default_scope('mmseg')


def optim_cfg(constructor=None):
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / '_base_' / 'schedules'
                              / 'binary_adamw_160k.py')).optim_wrapper
    cfg = copy.deepcopy(cfg)
    if constructor is None:
        cfg.pop('constructor')
    else:
        cfg.constructor = constructor
    return cfg


def train_step_data(batch=2):
    inputs, samples = make_batch(batch, (32, 32), 4, torch.device('cpu'))
    return dict(inputs=list(inputs), data_samples=samples)


def run_steps(model, cfg, compiled, steps=3, data=None):
    """``steps`` training steps, the learning rate changed before each (as a
    scheduler does); returns the logs, the final state and, when compiled,
    the number of graphs dynamo has built after each step."""
    wrapper = build_optim_wrapper(model, cfg)
    step = model.train_step
    if compiled:
        torch._dynamo.reset()
        counters.clear()
        step = torch.compile(step, backend='aot_eager')
    torch.manual_seed(1)
    logs, graphs = [], []
    for i in range(steps):
        for group in wrapper.optimizer.param_groups:
            group['lr'] = 0.1 / (i + 1)
        logs.append(step(data() if data else train_step_data(), wrapper))
        graphs.append(counters['stats']['unique_graphs'])
    return logs, model.state_dict(), graphs


def sgd_cfg(constructor):
    cfg = optim_cfg(constructor)
    # SGD: Adam's first steps move every weight by about lr whatever the
    # size of its gradient, which turns float noise in near-zero gradients
    # into visible differences
    cfg.optimizer = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.01)
    return cfg


def test_compiled_train_step_equals_eager_and_compiles_once():
    """mmengine's ``compile=True`` wraps ``train_step`` (forward, loss,
    backward, optimizer step) in torch.compile; ``aot_eager`` traces the
    forward and backward graphs as inductor does, without code generation.
    """
    torch.manual_seed(0)
    eager = MODELS.build(tiny_segmentor('didb', head='fcn')).train()
    compiled = copy.deepcopy(eager)
    cfg = sgd_cfg('CompilableOptimWrapperConstructor')
    logs_e, sd_e, _ = run_steps(eager, cfg, compiled=False)
    logs_c, sd_c, graphs = run_steps(compiled, cfg, compiled=True)
    # compiled in the first steps (the second one sees initialised
    # binarizer scales and filled caches), then reused: no graph break or
    # guard of the model compiles again per step. The one graph a later step
    # may add is mmseg's data preprocessor, guarded on the identity of each
    # sample's metainfo (up to dynamo's recompile limit, then eager).
    assert graphs[0] > 0 and graphs[2] - graphs[1] <= 1, graphs
    for a, b in zip(logs_e, logs_c):
        torch.testing.assert_close(a['loss'], b['loss'], rtol=1e-4,
                                   atol=1e-5)
    changed = [k for k in sd_e if not torch.equal(sd_e[k], sd_c[k])]
    assert any('linear.weight' in k for k in changed)  # the steps ran
    for k in changed:
        torch.testing.assert_close(sd_c[k], sd_e[k], rtol=1e-4, atol=1e-5,
                                   msg=k)


class LinearModel(BaseModel):
    """The smallest mmengine model: a linear and a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=self.norm(self.fc(inputs)).pow(2).mean())


@pytest.mark.parametrize('constructor', [
    'CompilableOptimWrapperConstructor', 'DefaultOptimWrapperConstructor'])
def test_only_the_binary_schedules_constructor_can_be_traced(constructor):
    """Why the binary schedules name their constructor: traced, the
    optimizer step fails on mmengine's ConfigDict parameter groups."""
    def data():
        return dict(inputs=torch.randn(2, 4))

    torch.manual_seed(0)
    model = LinearModel()
    cfg = sgd_cfg(constructor)
    if constructor.startswith('Default'):
        with pytest.raises(Exception, match='UserDefinedDictVariable'):
            run_steps(model, cfg, compiled=True, steps=1, data=data)
        return
    ref = copy.deepcopy(model)
    run_steps(ref, cfg, compiled=False, data=data)
    _, sd, graphs = run_steps(model, cfg, compiled=True, data=data)
    # the second step compiles train_step once more (mmengine's step
    # counter becomes a dynamic int), the third reuses it
    assert graphs[0] > 0 and graphs[2] == graphs[1], graphs
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(sd[k], v, msg=k)
