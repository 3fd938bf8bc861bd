"""The ``pmt-iqa`` command line: ``score`` here, ``train``/``eval``/``protocol`` from training."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="pmt-iqa", description="Blind image quality assessment with PMT-IQA."
    )
    parser.add_argument("--version", action="version", version=f"napari-pmt-iqa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from .cli_score import add_subcommands as add_score

    add_score(sub)
    try:
        from .training.cli import add_subcommands as add_training
    except ImportError:  # training CLI not available
        pass
    else:
        add_training(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
