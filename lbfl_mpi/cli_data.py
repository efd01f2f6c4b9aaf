"""``lbfl data fetch | check``: the argument parser, kept apart from data/staging.py so that building
the CLI's parser imports no torch (the data package loads it); the commands load it when they run."""
from __future__ import annotations

from .config import DATASETS
from .config.schema import FASHION_DEFAULT_ROOT


def _cmd_fetch(args) -> int:
    from .data.staging import cmd_fetch

    return cmd_fetch(args)


def _cmd_check(args) -> int:
    from .data.staging import cmd_check

    return cmd_check(args)


def add_data_parser(sub) -> None:
    """Register ``lbfl data fetch NAME --root DIR`` and ``lbfl data check NAME --root DIR``."""
    d = sub.add_parser("data", help="fetch a dataset (login node with internet) or check a staged one",
                       description="Stage datasets for training: fetch where there is internet, check "
                                   "where training will run, then train with data.root=DIR.")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download a dataset into DIR in the layout training reads",
                        description="Download NAME into DIR in the layout `lbfl train` reads with "
                                    "data.root=DIR, then check it. digits and synthetic are built in: "
                                    "nothing to fetch (exit 0). Without network: one error line, exit 2.")
    f.add_argument("name", metavar="NAME", choices=DATASETS, help=f"one of {', '.join(DATASETS)}")
    f.add_argument("--root", metavar="DIR", help="directory to download into (training's data.root)")
    f.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds a connection may stall before the download fails (default 60)")
    f.add_argument("--json", action="store_true", help="print the check result as JSON")
    f.set_defaults(func=_cmd_fetch)
    c = dsub.add_parser("check", help="verify a staged dataset as training will load it",
                        description="Load NAME from DIR through the trainer's own loader and verify the "
                                    "layout, the class count, the train/test sample counts and the input "
                                    "shape. Any problem: one error line, exit 2.")
    c.add_argument("name", metavar="NAME", choices=DATASETS, help=f"one of {', '.join(DATASETS)}")
    c.add_argument("--root", metavar="DIR", default="",
                   help="the data.root training will use (fashion_mnist default: " + FASHION_DEFAULT_ROOT + ")")
    c.add_argument("--image-size", type=int, default=0, metavar="PX",
                   help="data.image_size (0: 32 for CIFAR, 224 otherwise)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=_cmd_check)
