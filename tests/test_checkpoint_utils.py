"""The shared whole-model checkpoint loader and the option-dict check."""
import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import pytest
import torch
from torch import nn

from mmseg_didb.models.utils import (CheckpointMismatchError,
                                     load_whole_checkpoint)
from mmseg_didb.models.utils.config import option_dict


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_load_whole_checkpoint_from_file_and_from_dict(tmp_path):
    src, ema = _model(0), _model(1)
    path = str(tmp_path / 'ckpt.pth')
    torch.save({'state_dict': src.state_dict(),
                'state_dict_ema': ema.state_dict()}, path)
    for checkpoint in (path, torch.load(path, weights_only=True)):
        dst = _model(2)
        load_whole_checkpoint(dst, checkpoint)
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v), k
    # the first of ``keys`` that holds a dict wins
    dst = _model(2)
    load_whole_checkpoint(dst, path, keys=('state_dict_ema', 'state_dict'))
    assert torch.equal(dst[0].weight, ema[0].weight)
    # DataParallel prefixes are stripped
    torch.save({f'module.{k}': v for k, v in src.state_dict().items()}, path)
    dst = _model(2)
    load_whole_checkpoint(dst, path)
    assert torch.equal(dst[0].bias, src[0].bias)


def test_load_whole_checkpoint_errors_name_the_keys_and_the_fix(tmp_path):
    path = str(tmp_path / 'ckpt.pth')
    state = _model(0).state_dict()
    state.pop('0.bias')
    state['extra.weight'] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError,
                       match=r'1 missing keys \[0\.bias\]; 1 unexpected keys '
                       r'\[extra\.weight\]\. use the right config'):
        load_whole_checkpoint(_model(1), path, hint='use the right config')
    with pytest.raises(FileNotFoundError, match='does not exist.*train first'):
        load_whole_checkpoint(_model(1), str(tmp_path / 'no.pth'),
                              hint='train first')
    with pytest.raises(FileNotFoundError, match='nothing is downloaded'):
        load_whole_checkpoint(_model(1), 'https://example.com/m.pth')


def test_option_dict():
    assert option_dict('distill', None, ('mode', ), 'dict(mode=1)') == {}
    given = dict(mode='kl')
    out = option_dict('distill', given, ('mode', 'weight'), 'dict(mode=1)')
    assert out == given and out is not given
    with pytest.raises(TypeError, match=r'distill must be None or a dict '
                       r'such as dict\(mode=1\)'):
        option_dict('distill', 'kl', ('mode', ), 'dict(mode=1)')
    with pytest.raises(ValueError, match=r"Unknown distill keys \['temp'\]; "
                       r"valid keys are \['mode', 'weight'\]"):
        option_dict('distill', dict(temp=1), ('mode', 'weight'), 'x')
