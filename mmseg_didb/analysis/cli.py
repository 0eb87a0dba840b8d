"""Command-line arguments shared by the efficiency tools (tools/analysis)."""
import argparse

from mmengine.config import DictAction


def add_model_args(parser: argparse.ArgumentParser, vs_help: str,
                   json_help: str) -> None:
    """Add ``config``, ``--vs``, ``--shape``, ``--threads``, ``--json`` and
    ``--cfg-options`` (read back with :func:`check_model_args`)."""
    parser.add_argument('config', help='model config file')
    parser.add_argument('--vs', default='auto', metavar='CONFIG',
                        help=vs_help)
    parser.add_argument('--shape', type=int, nargs='+', default=[512, 512],
                        metavar='H W', help='input size (default 512 512)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--json', nargs='?', const='-', default=None,
                        metavar='PATH', help=json_help)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')


def check_model_args(parser: argparse.ArgumentParser,
                     args: argparse.Namespace) -> None:
    """Turn a single ``--shape`` size into H W and reject bad sizes."""
    if len(args.shape) == 1:
        args.shape = args.shape * 2
    if len(args.shape) != 2 or min(args.shape) < 1:
        parser.error('--shape takes H W (or one size for a square input)')
