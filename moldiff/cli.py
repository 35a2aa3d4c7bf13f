"""Command line: ``moldiff {data,train,sample,evaluate}``.

Thin layer: parse arguments, load configs, call the library. Any ``ValueError``/``FileNotFoundError``
raised for bad input becomes a one-line ``moldiff: error: ...`` message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class CLIError(ValueError):
    """Bad user input detected by the command line layer."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


# ============================================================================ data
def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare QM9 or import your own molecules")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    prep = dsub.add_parser("prepare", help="read QM9 from the qm9pack wheel and cache arrays + splits")
    prep.add_argument("--root", default=None, help="data directory (default: moldiff's data dir)")
    imp = dsub.add_parser("import", help="import molecules from an SDF or multi-frame XYZ file")
    imp.add_argument("file", help="input .sdf or .xyz file")
    imp.add_argument("--name", required=True, help="dataset name (used as data.dataset in configs)")
    imp.add_argument("--root", default=None, help="data directory (default: moldiff's data dir)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the train/valid/test split")


def _run_data(args: argparse.Namespace) -> int:
    raise CLIError("data commands are not available yet")


# ============================================================================ train
def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a diffusion model")
    p.add_argument("--config", required=True, help="YAML config (overlay on the defaults)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.csv, loss.png)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--condition", default=None, help="comma-separated properties, e.g. alpha,gap")


def _run_train(args: argparse.Namespace) -> int:
    raise CLIError("train is not available yet")


# ============================================================================ sample
def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample molecules from a trained model")
    p.add_argument("--model", default="qm9", help="shipped model name or checkpoint path (default: qm9)")
    p.add_argument("--num", type=_positive_int, default=100, help="number of molecules")
    p.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default: model's T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output file (.sdf or .xyz)")
    p.add_argument("--format", choices=("sdf", "xyz"), default=None, help="default: from --out suffix")
    p.add_argument("--sampler", default=None, help="sampler name (default: the model's default)")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--target", action="append", default=[], help="property target, e.g. alpha=80")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight")
    p.add_argument("--num-atoms", type=_positive_int, default=None, help="fix the number of atoms")


def _run_sample(args: argparse.Namespace) -> int:
    raise CLIError("sample is not available yet")


# ============================================================================ evaluate
def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score molecules (EDM stability, validity, ...)")
    p.add_argument("file", help="SDF, multi-frame XYZ or moldiff sample file")
    p.add_argument("--json", default=None, help="write the summary as JSON")
    p.add_argument("--csv", default=None, help="write one row per molecule as CSV")
    p.add_argument("--reference", default=None, help="novelty reference: qm9")
    p.add_argument("--workers", type=_positive_int, default=1)


def _run_evaluate(args: argparse.Namespace) -> int:
    raise CLIError("evaluate is not available yet")


# ============================================================================ entry
def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moldiff", description=__doc__.splitlines()[0])
    from moldiff import __version__

    parser.add_argument("--version", action="version", version=f"moldiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_parser(sub)
    _add_train_parser(sub)
    _add_sample_parser(sub)
    _add_evaluate_parser(sub)
    return parser.parse_args(argv)


_RUNNERS = {"data": "_run_data", "train": "_run_train", "sample": "_run_sample", "evaluate": "_run_evaluate"}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (2 for bad input)."""
    args = _parse_args(argv)  # argparse exits with code 2 on malformed arguments
    runner = globals()[_RUNNERS[args.command]]
    try:
        return int(runner(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"moldiff: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
