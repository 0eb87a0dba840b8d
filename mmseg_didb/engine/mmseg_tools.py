"""Run mmseg's (or mmpretrain's, mmdet's) own ``tools/train.py`` and
``tools/test.py`` with the plugin.

The OpenMMLab wheels ship their tools (``<package>/.mim/tools``); the
plugin's ``tools/train.py`` and ``tools/test.py`` import the plugin (its
registries and the compatibility fixes of :mod:`mmseg_didb.compat`), take
the few options of their own out of the command line and run the toolbox's
script with the rest, so the argument set and behaviour are the toolbox's
exactly. The toolbox is the config's ``default_scope``: mmseg for the
segmentation configs, mmpretrain for ``configs/pretrain/``, mmdet for
``configs/det/`` (its integration module is imported first).
"""
import argparse
import contextlib
import importlib.util
import logging
import os
import os.path as osp
import runpy
import sys
from typing import Any, Callable, Iterator, List, Optional, Sequence

from mmengine.logging import print_log

from ..compat import UNSAFE_LOAD_ENV, add_unsafe_load_argument

__all__ = ['TOOLBOXES', 'tool_path', 'config_toolbox', 'run_openmmlab_tool',
           'plugin_parser', 'extra_custom_hooks', 'edited_runner_configs']

#: toolboxes whose tools run the plugin's configs (by ``default_scope``),
#: and the plugin module each needs imported first
TOOLBOXES = {
    'mmseg': None,
    'mmpretrain': 'mmseg_didb.integrations.mmpretrain',
    'mmdet': 'mmseg_didb.integrations.mmdet',
}


def tool_path(name: str, package: str = 'mmseg') -> str:
    """Path of ``tools/<name>.py`` in the installed wheel of ``package``."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(f'{package} is not installed; run the set-up '
                          '(bash tools/setup_env.sh)')
    path = osp.join(osp.dirname(spec.origin), '.mim', 'tools', f'{name}.py')
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} is missing: this {package} install has no tools; '
            f'reinstall the {package} wheel pinned in '
            'requirements/constraints.txt (bash tools/setup_env.sh)')
    return path


def config_toolbox(config: Optional[str]) -> str:
    """The toolbox whose tools run ``config``: its ``default_scope``.

    A path that is not a file is left to mmseg's tool (which reports it).

    Raises:
        ValueError: a ``default_scope`` no toolbox of :data:`TOOLBOXES`
            handles.
    """
    if not config or not osp.isfile(config):
        return 'mmseg'
    from mmengine.config import Config
    scope = Config.fromfile(config).get('default_scope') or 'mmseg'
    if scope not in TOOLBOXES:
        raise ValueError(
            f"{config} has default_scope={scope!r}; the plugin's tools run "
            f'configs of {sorted(TOOLBOXES)}. Use that toolbox\'s own tools '
            'with custom_imports of mmseg_didb.')
    return scope


def plugin_parser(description: str) -> argparse.ArgumentParser:
    """Parser of the plugin's options of a tool (``--unsafe-load``); the
    tool adds its own and passes what it does not know to mmseg."""
    parser = argparse.ArgumentParser(description=description, add_help=False)
    add_unsafe_load_argument(
        parser, 'checkpoints (load_from, --resume, the tested checkpoint)')
    return parser


def _print_plugin_help(parser: argparse.ArgumentParser, name: str) -> None:
    print(f'mmseg_didb options (the rest are those of tools/{name}.py of '
          "mmseg, or of mmpretrain / mmdet for their configs):")
    for action in parser._actions:
        print(f"  {', '.join(action.option_strings):18s} {action.help}")
    print()


def run_openmmlab_tool(name: str, parser: argparse.ArgumentParser,
                       argv: Optional[Sequence[str]] = None):
    """Parse the plugin options of ``parser`` out of ``argv`` and run the
    config's toolbox's ``tools/<name>.py`` (see :func:`config_toolbox`)
    with the rest as its command line.

    Returns:
        The plugin options (``argparse.Namespace``), after the run.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if '-h' in argv or '--help' in argv:
        _print_plugin_help(parser, name)
    args, rest = parser.parse_known_args(argv)
    if args.unsafe_load:
        os.environ[UNSAFE_LOAD_ENV] = '1'  # also seen by launched workers
        print_log('--unsafe-load: checkpoints that weights-only loading '
                  'refuses are fully unpickled (trusted files only)',
                  logger='current', level=logging.WARNING)
    config = rest[0] if rest and not rest[0].startswith('-') else None
    toolbox = config_toolbox(config)
    if TOOLBOXES[toolbox]:
        importlib.import_module(TOOLBOXES[toolbox])
    path = tool_path(name, toolbox)
    saved = sys.argv
    sys.argv = [path] + rest
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        sys.argv = saved
    _destroy_process_group()
    return args


def _destroy_process_group() -> None:
    """Shut the launcher's process group down before the interpreter
    does: the toolboxes' tools leave it open, and gloo's worker threads
    torn down at interpreter exit can abort the process (SIGABRT,
    'terminate called without an active exception') after a run that
    succeeded. Only after a success: destroying while another rank may
    still be in a collective can hang."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def edited_runner_configs(edit: Callable[[Any], None]) -> Iterator[None]:
    """Inside the context, every Runner built from a config
    (``Runner.from_cfg``, as the toolboxes' tools do) first has ``edit``
    applied to its config."""
    from mmengine.runner import Runner
    original = Runner.__dict__['from_cfg']

    def from_cfg(cls, cfg):
        edit(cfg)
        return original.__func__(cls, cfg)

    Runner.from_cfg = classmethod(from_cfg)
    try:
        yield
    finally:
        Runner.from_cfg = original


def extra_custom_hooks(hooks: List[dict]) -> contextlib.AbstractContextManager:
    """Append ``hooks`` to the ``custom_hooks`` of every config the
    Runner is built from (``Runner.from_cfg``) inside the context."""

    def edit(cfg) -> None:
        cfg.custom_hooks = list(cfg.get('custom_hooks', None) or []) + hooks

    return edited_runner_configs(edit)
