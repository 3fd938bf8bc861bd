"""The ``pmt-iqa`` command line: one module per verb (``score``, ``train``, ``finetune``, ``eval``,
``protocol``, ``defects``).

What several verbs share lives in :mod:`._common`. Entry point: ``napari_pmt_iqa.cli:main`` (also
``python -m napari_pmt_iqa ...`` and ``torchrun -m napari_pmt_iqa train ...``). torch is imported only
when a command runs.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="pmt-iqa", description="Blind image quality assessment with PMT-IQA."
    )
    parser.add_argument("--version", action="version", version=f"napari-pmt-iqa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from .score import add_subcommands as add_score

    add_score(sub)
    try:
        from .defects import add_subcommands as add_defects
        from .eval import add_subcommands as add_eval
        from .finetune import add_subcommands as add_finetune
        from .protocol import add_subcommands as add_protocol
        from .train import add_subcommands as add_train
    except ImportError:  # training CLI not available
        pass
    else:
        add_train(sub)
        add_finetune(sub)
        add_eval(sub)
        add_protocol(sub)
        add_defects(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
