"""`import mmseg_didb` registers every module of the plugin in mmseg's
registries, reachable as 'Name' in mmseg configs and 'mmseg.Name' from other
OpenMMLab scopes."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

import pytest

import mmseg_didb
import mmengine.registry as engine_registry
import mmseg.registry as seg_registry
from mmengine.registry import Registry

PACKAGE_DIR = Path(mmseg_didb.__file__).parent


def _registrations() -> List[Tuple[str, str, str]]:
    """(registry variable, registered name, file) for every
    ``X.register_module`` use in the package's source: decorators
    ``@X.register_module()`` / ``@X.register_module(name=...)`` and calls
    ``X.register_module('Name', module=Cls)`` / ``X.register_module(
    module=Cls)``."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob('*.py')):
        if path.relative_to(PACKAGE_DIR).parts[0] == 'integrations':
            # other toolboxes' registries, on demand (test_integrations.py)
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                for dec in node.decorator_list:
                    if isinstance(dec, ast.Call) and \
                            isinstance(dec.func, ast.Attribute) and \
                            dec.func.attr == 'register_module':
                        name = node.name
                        for kw in dec.keywords:
                            if kw.arg == 'name' and \
                                    isinstance(kw.value, ast.Constant):
                                name = kw.value.value
                        if dec.args and isinstance(dec.args[0], ast.Constant):
                            name = dec.args[0].value
                        found.append((ast.unparse(dec.func.value), name,
                                      str(path.relative_to(PACKAGE_DIR))))
            elif isinstance(node, ast.Call) and \
                    isinstance(node.func, ast.Attribute) and \
                    node.func.attr == 'register_module':
                kwargs = {kw.arg: kw.value for kw in node.keywords}
                if 'module' not in kwargs:
                    continue  # decorator form, handled above
                name = None
                if node.args and isinstance(node.args[0], ast.Constant):
                    name = node.args[0].value
                elif isinstance(kwargs.get('name'), ast.Constant):
                    name = kwargs['name'].value
                elif isinstance(kwargs['module'], ast.Name):
                    name = kwargs['module'].id
                if name is not None:
                    found.append((ast.unparse(node.func.value), name,
                                  str(path.relative_to(PACKAGE_DIR))))
    return found


def _all_registries() -> List[Registry]:
    regs = []
    for module in (seg_registry, engine_registry):
        regs += [v for v in vars(module).values() if isinstance(v, Registry)]
    return regs


REGISTRATIONS = _registrations()


def test_source_scan_finds_the_registrations():
    names = {name for _, name, _ in REGISTRATIONS}
    assert 'TextureMosaicDataset' in names
    assert len(REGISTRATIONS) >= 2


@pytest.mark.parametrize('registry_var,name,path', REGISTRATIONS,
                         ids=[n for _, n, _ in REGISTRATIONS])
def test_every_registration_is_live_after_import(registry_var, name, path):
    """Each module the source registers is in an mmseg (or mmengine root)
    registry after ``import mmseg_didb``, from the plugin's own code."""
    hits = [reg for reg in _all_registries() if name in reg.module_dict]
    assert hits, f'{name} ({path}) is not registered after import'
    assert any(
        reg.module_dict[name].__module__.startswith('mmseg_didb')
        for reg in hits), f'{name} is registered, but not from mmseg_didb'


def test_texture_dataset_in_mmseg_datasets():
    from mmseg_didb.datasets import TextureMosaicDataset
    assert seg_registry.DATASETS.get('TextureMosaicDataset') is \
        TextureMosaicDataset
    assert seg_registry.DATASETS.scope == 'mmseg'


def test_scoped_names_from_another_codebase():
    """Other OpenMMLab codebases (children of mmengine's root registries,
    scope != 'mmseg') reach plugin modules as 'mmseg.Name'."""
    other_models = Registry(
        'model', parent=engine_registry.MODELS, scope='didb_other_project')
    other_datasets = Registry(
        'dataset', parent=engine_registry.DATASETS, scope='didb_other_project')
    from mmseg_didb.datasets import TextureMosaicDataset
    assert other_datasets.get('mmseg.TextureMosaicDataset') is \
        TextureMosaicDataset
    models = [(n, p) for var, n, p in REGISTRATIONS
              if n in seg_registry.MODELS.module_dict]
    for name, _ in models:
        assert other_models.get(f'mmseg.{name}') is \
            seg_registry.MODELS.get(name)


def test_custom_imports_in_a_fresh_interpreter(tiny_config, repo_root):
    """A config with custom_imports=['mmseg_didb'] is all a user needs:
    nothing imports the plugin by hand."""
    code = textwrap.dedent(f"""
        import sys
        from mmengine.config import Config
        from mmengine.registry import DefaultScope
        assert 'mmseg_didb' not in sys.modules
        cfg = Config.fromfile({str(tiny_config)!r})
        assert 'mmseg_didb' in sys.modules
        from mmseg.registry import DATASETS
        with DefaultScope.overwrite_default_scope('mmseg'):
            ds = DATASETS.build(cfg.val_dataloader.dataset)
        print(type(ds).__name__, len(ds))
        """)
    proc = subprocess.run([sys.executable, '-c', code],
                          cwd=str(repo_root),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'TextureMosaicDataset 4' in proc.stdout
