"""Run mmseg's own ``tools/train.py`` and ``tools/test.py`` with the plugin.

mmseg's wheel ships its tools (``mmseg/.mim/tools``); the plugin's
``tools/train.py`` and ``tools/test.py`` import the plugin (its registries
and the compatibility fixes of :mod:`mmseg_didb.compat`), take the few
options of their own out of the command line and run mmseg's script with
the rest, so the argument set and behaviour are mmseg's exactly.
"""
import argparse
import contextlib
import importlib.util
import logging
import os
import os.path as osp
import runpy
import sys
from typing import Iterator, List, Optional, Sequence

from mmengine.logging import print_log

from ..compat import UNSAFE_LOAD_ENV

__all__ = ['mmseg_tool_path', 'run_mmseg_tool', 'plugin_parser',
           'extra_custom_hooks']


def mmseg_tool_path(name: str) -> str:
    """Path of mmseg's own ``tools/<name>.py`` in its installed wheel."""
    spec = importlib.util.find_spec('mmseg')
    if spec is None or spec.origin is None:
        raise ImportError('mmseg is not installed; run the set-up '
                          '(bash tools/setup_env.sh)')
    path = osp.join(osp.dirname(spec.origin), '.mim', 'tools', f'{name}.py')
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} is missing: this mmsegmentation install has no tools; '
            'reinstall the mmsegmentation==1.2.2 wheel (bash '
            'tools/setup_env.sh)')
    return path


def plugin_parser(description: str) -> argparse.ArgumentParser:
    """Parser of the plugin's options of a tool (``--unsafe-load``); the
    tool adds its own and passes what it does not know to mmseg."""
    parser = argparse.ArgumentParser(description=description, add_help=False)
    parser.add_argument(
        '--unsafe-load', action='store_true',
        help='load checkpoints that weights-only unpickling refuses '
        '(load_from, --resume, the tested checkpoint) with a full unpickle: '
        'trusted files only, it can run code; logged')
    return parser


def _print_plugin_help(parser: argparse.ArgumentParser, name: str) -> None:
    print(f'mmseg_didb options (the rest are mmseg\'s tools/{name}.py):')
    for action in parser._actions:
        print(f"  {', '.join(action.option_strings):18s} {action.help}")
    print()


def run_mmseg_tool(name: str, parser: argparse.ArgumentParser,
                   argv: Optional[Sequence[str]] = None):
    """Parse the plugin options of ``parser`` out of ``argv`` and run
    mmseg's ``tools/<name>.py`` with the rest as its command line.

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
    path = mmseg_tool_path(name)
    saved = sys.argv
    sys.argv = [path] + rest
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        sys.argv = saved
    return args


@contextlib.contextmanager
def extra_custom_hooks(hooks: List[dict]) -> Iterator[None]:
    """Append ``hooks`` to the ``custom_hooks`` of every config the
    Runner is built from (``Runner.from_cfg``) inside the context."""
    from mmengine.runner import Runner
    original = Runner.__dict__['from_cfg']

    def from_cfg(cls, cfg):
        cfg.custom_hooks = list(cfg.get('custom_hooks', None) or []) + hooks
        return original.__func__(cls, cfg)

    Runner.from_cfg = classmethod(from_cfg)
    try:
        yield
    finally:
        Runner.from_cfg = original
