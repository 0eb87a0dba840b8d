"""mmseg_didb.compat: each fix, its trigger and its limits."""
import argparse
import importlib.util
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import mmseg_didb  # noqa: F401  (applies the fixes)
from mmseg_didb import compat

# Decided after the import above: a real extension is one that is not the
# placeholder (find_spec would also find the placeholder in sys.modules).
REAL_MMCV_EXT = importlib.util.find_spec('mmcv') is not None and \
    not compat.mmcv_ext_is_placeholder()


def _python(code: str, repo_root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          cwd=str(repo_root),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          text=True,
                          timeout=600)


# ---------------------------------------------------------------- mmcv._ext
@pytest.mark.skipif(REAL_MMCV_EXT, reason='a compiled mmcv is installed')
def test_lite_mmcv_breaks_mmseg_models_without_the_fix(repo_root):
    proc = _python('import mmseg.models', repo_root)
    assert proc.returncode != 0
    assert "No module named 'mmcv._ext'" in proc.stdout


@pytest.mark.skipif(REAL_MMCV_EXT, reason='a compiled mmcv is installed')
def test_placeholder_lets_mmseg_models_import_and_ops_fail_clearly(
        repo_root):
    proc = _python(
        """
        import torch
        import mmseg_didb
        from mmseg_didb import compat
        import mmseg.models
        from mmseg.models.losses import FocalLoss  # imports mmcv.ops
        assert compat.mmcv_ext_is_placeholder()
        from mmcv.ops import sigmoid_focal_loss
        try:
            sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2).long(),
                               2.0, 0.25)
        except compat.MissingCompiledOpError as e:
            assert isinstance(e, NotImplementedError)
            print('ERROR:', e)
        else:
            raise SystemExit('compiled op did not raise')
        """, repo_root)
    assert proc.returncode == 0, proc.stdout
    message = proc.stdout.split('ERROR:', 1)[1]
    assert 'sigmoid_focal_loss_forward' in message
    assert 'full mmcv' in message and 'MMCV_WITH_OPS=1' in message


def test_placeholder_not_installed_over_a_real_extension(repo_root):
    proc = _python(
        """
        import importlib.util, sys, types
        real = types.ModuleType('mmcv._ext')  # stands for a compiled build
        sys.modules['mmcv._ext'] = real
        # the compat package alone (mmseg_didb would import mmcv.ops, which
        # this stand-in cannot serve)
        spec = importlib.util.spec_from_file_location(
            'didb_compat', 'mmseg_didb/compat/__init__.py',
            submodule_search_locations=['mmseg_didb/compat'])
        compat = importlib.util.module_from_spec(spec)
        sys.modules['didb_compat'] = compat
        spec.loader.exec_module(compat)
        compat.apply()
        assert sys.modules['mmcv._ext'] is real
        assert not compat.mmcv_ext_is_placeholder()
        assert compat.install_mmcv_ext_placeholder() is False
        print('OK')
        """, repo_root)
    assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stdout


@pytest.mark.skipif(not REAL_MMCV_EXT, reason='needs a compiled mmcv')
def test_real_extension_used_unchanged():
    assert not compat.mmcv_ext_is_placeholder()


# ------------------------------------------------------------- weights_only
def test_runner_checkpoint_needs_allowlisted_globals(tiny_run, repo_root):
    """Without the plugin the default torch.load fails on a Runner
    checkpoint; every global it needs is in the plugin's allowlist."""
    work_dir, _ = tiny_run
    path = str(work_dir / 'iter_2.pth')
    proc = _python(
        f"""
        import pickle, torch
        try:
            torch.load({path!r})
        except pickle.UnpicklingError as e:
            print('REFUSED:', 'HistoryBuffer' in str(e))
        for name in torch.serialization.get_unsafe_globals_in_checkpoint(
                {path!r}):
            print('GLOBAL:', name)
        """, repo_root)
    assert proc.returncode == 0, proc.stdout
    assert 'REFUSED: True' in proc.stdout
    needed = set(re.findall(r'GLOBAL: (\S+)', proc.stdout))
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in needed
    allowed = set()
    for entry in compat.runner_checkpoint_globals():
        if isinstance(entry, tuple):
            allowed.add(entry[1])
        else:
            allowed.add(f'{entry.__module__}.{entry.__qualname__}')
    assert needed <= allowed, needed - allowed
    # With the plugin imported nothing in the file is unknown any more.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []


def test_runner_checkpoint_loads_with_weights_only(tiny_run):
    work_dir, _ = tiny_run
    ckpt = torch.load(
        work_dir / 'iter_2.pth', map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == 2
    assert set(ckpt) >= {'state_dict', 'optimizer', 'message_hub'}
    buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert buffer.mean() > 0  # HistoryBuffer with its statistics methods
    # The default (torch >= 2.6: weights_only=True) loads it too.
    assert torch.load(work_dir / 'iter_2.pth')['meta']['iter'] == 2


class _GetattrExploit:
    """Pickles as getattr(HistoryBuffer, '__init__'): not a statistic."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_safe_loading_stays_on(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _GetattrExploit()}, path)
    with pytest.raises(pickle.UnpicklingError, match='getattr'):
        torch.load(path, weights_only=True)
    # A class outside the allowlist is still refused.
    torch.save({'ns': argparse.Namespace(a=1)}, path)
    with pytest.raises(pickle.UnpicklingError, match='Namespace'):
        torch.load(path, weights_only=True)
    # ... while the allowlisted statistics method resolves.
    from mmengine.logging import HistoryBuffer
    torch.save({'m': HistoryBuffer.mean}, path)
    assert torch.load(path, weights_only=True)['m'] is HistoryBuffer.mean


def test_resume_continues_from_last_checkpoint(tiny_run, tiny_config,
                                               tmp_path, run_tool):
    """A killed run resumed with --resume continues from its last
    checkpoint (iteration count, LR schedule), under the installed torch."""
    work_dir, _ = tiny_run
    resumed = tmp_path / 'resumed'
    shutil.copytree(work_dir, resumed)
    proc = run_tool([
        'tools/train.py', tiny_config, '--work-dir', resumed, '--resume',
        '--cfg-options', 'train_cfg.max_iters=3'
    ])
    assert re.search(r'Auto resumed from the latest checkpoint .*iter_2\.pth',
                     proc.stdout), proc.stdout[-3000:]
    assert 'resumed epoch: 0, iter: 2' in proc.stdout
    assert 'Iter(train) [3/3]' in proc.stdout
    assert 'Iter(train) [1/3]' not in proc.stdout
    before = torch.load(resumed / 'iter_2.pth', map_location='cpu')
    after = torch.load(resumed / 'iter_3.pth', map_location='cpu')
    assert after['meta']['iter'] == 3
    # The PolyLR scheduler continued (3 steps taken in all, not 1).
    assert after['param_schedulers'][0]['last_step'] == \
        before['param_schedulers'][0]['last_step'] + 1
    # The optimizer state was restored: AdamW's step counter continued.
    steps_before = next(iter(before['optimizer']['state'].values()))['step']
    steps_after = next(iter(after['optimizer']['state'].values()))['step']
    assert float(steps_after) == float(steps_before) + 1


# ------------------------------------------------------- mmseg:: inheritance
_BLOCK_PKG_RESOURCES = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'pkg_resources' or name.startswith('pkg_resources.'):
            raise ModuleNotFoundError("No module named 'pkg_resources'")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_mmseg_base_inheritance_without_pkg_resources(repo_root):
    proc = _python(
        _BLOCK_PKG_RESOURCES + """
from mmengine.config import Config
try:
    Config.fromfile('configs/demo_texture.py')
except ModuleNotFoundError as e:
    print('UNFIXED:', e)
else:
    raise SystemExit('pkg_resources was not blocked')
import mmseg_didb
from mmseg_didb import compat
cfg = Config.fromfile('configs/demo_texture.py')
assert cfg.default_scope == 'mmseg'
assert 'pkg_resources' not in sys.modules
print('FIXED')
""", repo_root)
    assert proc.returncode == 0, proc.stdout
    assert 'UNFIXED' in proc.stdout and 'FIXED' in proc.stdout


def test_mmseg_base_inheritance(repo_root):
    from mmengine.config import Config
    cfg = Config.fromfile(str(repo_root / 'configs' / 'demo_texture.py'))
    assert cfg.default_scope == 'mmseg'  # from mmseg::_base_/default_runtime
    assert cfg.train_dataloader.dataset.type == 'TextureMosaicDataset'


def test_package_lookup_without_pkg_resources():
    import mmseg
    from mmengine.config import config as config_module
    from mmengine.utils import package_utils
    assert package_utils.get_installed_path is compat.get_installed_path
    assert config_module.is_installed is compat.is_installed
    assert compat.is_installed('mmsegmentation')
    assert compat.is_installed('mmseg')  # module name, found by find_spec
    assert not compat.is_installed('surely-not-an-installed-package')
    assert compat.get_installed_path('mmsegmentation') == \
        os.path.dirname(mmseg.__file__)
    assert compat.package2module('mmsegmentation') == 'mmseg'
