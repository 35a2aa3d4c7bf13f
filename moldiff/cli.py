"""Command line: ``moldiff {data,train,sample,evaluate,relax,models}``.

Thin layer: parse arguments, load configs, call the library. Any ``ValueError``/``FileNotFoundError``
raised for bad input becomes a one-line ``moldiff: error: ...`` message and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from moldiff.argtypes import nonneg_int, positive_int
from moldiff.constants import MAX_SEED  # the one seed limit (SamplingConfig checks the same)
from moldiff.runtime import tune_cpu_allocator

if TYPE_CHECKING:  # the CLI imports the library lazily, so that --help stays fast
    import torch

    from moldiff.pipeline import MolDiff
    from moldiff.sampling.inpaint import InpaintOutput
    from moldiff.sampling.sharding import Shard


class CLIError(ValueError):
    """Bad user input detected by the command line layer."""


_positive_int = positive_int
_nonneg_int = nonneg_int


#: Largest ``--num``: more is a typo, not a run (each molecule is sampled and kept in memory).
MAX_NUM = 10**9


def _num(text: str) -> int:
    v = _positive_int(text)
    if v > MAX_NUM:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_NUM:,} molecules, got {text!r}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text[:40]!r}") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be between 0 and {MAX_SEED} (2^32 - 1), got {text[:40]}")
    return v


def _time_range(text: str) -> tuple[float, float]:
    """``LO,HI`` -> two normalised times (checked further by ``SamplingConfig``)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two times in [0, 1]), got {text[:40]!r}")
    lo, hi = (_finite_float(p.strip()) for p in parts)
    if not 0.0 <= lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 <= LO <= HI <= 1, got {text[:40]!r}")
    return lo, hi


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
    return v


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example epilogs as written and appends ``(default: X)`` to options that have one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" not in text and action.option_strings and action.nargs != 0
                and default not in (None, False, [], "")
                and default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``moldiff: error: ...``, exit 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(str(message).split())
        self.exit(2, f"moldiff: error: {message} (see '{self.prog} --help')\n")


def _check_output(path: str | Path, what: str, directory: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work is done (``CLIError``).

    Args:
        path: the output file (or run directory with ``directory=True``).
        what: the option's name, for the message.
        directory: the output is a directory (created if missing) rather than a file.
    """
    p = Path(path)
    if not str(path).strip():
        raise CLIError(f"{what}: empty path")
    if directory:
        if p.exists() and not p.is_dir():
            raise CLIError(f"{what} {p} exists and is not a directory")
    elif p.is_dir():
        raise CLIError(f"{what} {p} is a directory; give a file name, e.g. {p / ('out' + (p.suffix or '.sdf'))}")
    elif str(path).endswith(os.sep):
        raise CLIError(f"{what} {p}: give a file name, not a directory")
    # the first existing ancestor must be a writable directory (missing levels are created there)
    base = p if directory else p.parent
    base = base if str(base) else Path(".")
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise CLIError(f"{what} {p}: {base} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".moldiff-write-test.", dir=base)
    except OSError as exc:
        raise CLIError(f"{what} {p}: cannot write to {base} ({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


class _Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that ``finally`` blocks remove temporary files."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises :class:`_Terminated` (main thread only; restored afterwards)."""
    def handler(signum: int, frame: object) -> None:
        raise _Terminated(signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a worker thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _interrupt_hint(args: argparse.Namespace) -> str:
    """What an interrupted command left behind, and how to continue."""
    if args.command == "train":
        ckpt = Path(args.out) / "last.pt"
        if not ckpt.is_file():
            return "; no checkpoint was written yet, so there is nothing to resume"
        step = "?"
        with contextlib.suppress(Exception):
            from moldiff.checkpoint import load_checkpoint

            step = load_checkpoint(ckpt)["state"]["step"]
        cond = f" --condition {args.condition}" if args.condition else ""
        return (f"; the last checkpoint is {ckpt} (step {step}): continue with "
                f"moldiff train --config {args.config} --out {args.out}{cond} --resume")
    out = getattr(args, "out", None)
    if args.command in ("sample", "relax") and out:
        p = Path(out)
        if p.is_file() and p.stat().st_mtime >= _STARTED[0]:
            return f"; {out} was complete and is kept"
        return f"; {out} was not written" + (" (the older file of that name is unchanged)" if p.exists() else "")
    return ""


_STARTED = [0.0]  # time.time() when main() started (tells a file written by this run from an older one)


# ============================================================================ data
def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare QM9 or import your own molecules")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    prep = dsub.add_parser("prepare", help="read QM9 from the qm9pack wheel and cache arrays + splits")
    prep.add_argument("--root", default=None, help="data directory (default: moldiff's data dir)")
    prep.add_argument("--no-bonds", dest="bonds", action="store_false",
                      help="do not derive QM9's bonds (kekulised, from the geometry and the SMILES; ~1 min on "
                           "one core) when the cache lacks them")
    imp = dsub.add_parser("import", help="import molecules from an SDF or multi-frame XYZ file")
    imp.add_argument("file", help="input .sdf or .xyz file")
    imp.add_argument("--name", required=True, help="dataset name (used as data.dataset in configs)")
    imp.add_argument("--root", default=None, help="data directory (default: moldiff's data dir)")
    imp.add_argument("--seed", type=_seed, default=0, help="seed of the random 80/10/10 train/valid/test split")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    from moldiff.data.commands import add_build_parsers

    add_build_parsers(dsub)  # data build / data merge (moldiff.data.conformers)


def _run_data(args: argparse.Namespace) -> int:
    from moldiff.data import import_dataset, prepare_qm9

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    if getattr(args, "root", None) is not None:
        _check_output(args.root, "--root", directory=True)
    if args.data_cmd == "prepare":
        arrays = prepare_qm9(root=args.root, progress=True, log=log, bonds=args.bonds)
        bonds = ""
        if arrays.has_bonds:
            bonds = f", {len(arrays.bond_type)} bonds ({int((~arrays.bonds_known).sum())} molecules without bonds)"
        print(f"QM9 ready: {arrays.num_molecules} molecules, {arrays.num_atoms_total} atoms{bonds}")
        return 0
    if args.data_cmd == "import":
        path = import_dataset(args.file, args.name, root=args.root, seed=args.seed,
                              overwrite=args.overwrite, log=log)
        print(path)
        return 0
    if args.data_cmd in ("build", "merge"):
        from moldiff.data.commands import run_build_command

        return run_build_command(args)
    raise CLIError(f"unknown data command {args.data_cmd!r}; choose prepare, import, build or merge")


# ============================================================================ train
def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a diffusion model")
    p.add_argument("--config", required=True, help="YAML config (overlay on the defaults)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.csv, loss.png)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--condition", default=None,
                   help="train a conditional model on these comma-separated properties, e.g. alpha or alpha,gap "
                        "(alpha, gap, homo, lumo, mu, Cv)")
    p.add_argument("--init", default=None,
                   help="start from the weights of this checkpoint or shipped model (e.g. qm9); "
                        "the config must describe the same architecture")


def _run_train(args: argparse.Namespace) -> int:
    from moldiff.config import ExperimentConfig
    from moldiff.training.run import run_training

    config = ExperimentConfig.load_yaml(args.config)
    if args.condition:
        from moldiff.conditioning import check_properties

        props = check_properties([p.strip() for p in args.condition.split(",") if p.strip()])
        config = config.override(data={"conditioning": list(props)})
    if args.resume and args.init:
        raise CLIError("use either --resume or --init, not both")
    _check_output(args.out, "--out", directory=True)
    init = None
    if args.init:
        from moldiff.pipeline import resolve_checkpoint

        init = resolve_checkpoint(args.init)  # a shipped model name (e.g. qm9) or a checkpoint path
        if not init.is_file():
            raise CLIError(f"--init: checkpoint not found: {init}")
    state = run_training(config, args.out, resume=args.resume, init=init)
    print(f"trained {state.step} steps ({state.epoch} full epochs) in {state.elapsed_s:.0f} s; "
          f"checkpoints in {args.out}")
    return 0


# ============================================================================ sample
def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample molecules from a trained model")
    p.add_argument("--model", default="qm9", help="shipped model name or checkpoint path (default: qm9)")
    p.add_argument("--num", type=_num, default=100, help="number of molecules")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="denoising steps (default: the model's recommended count, else its T)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="random seed (0 to 2^32-1); the same seed, model and options give the same molecules")
    p.add_argument("--out", required=True, help="output file (.sdf or .xyz); written only when sampling finishes")
    p.add_argument("--format", choices=("sdf", "xyz"), default=None, help="default: from --out suffix")
    p.add_argument("--sampler", default=None,
                   help="ancestral, ddim, dpm2 or dpm2sde (default: the model's recommended sampler, else ancestral)")
    p.add_argument("--eta", type=_finite_float, default=0.0, help="DDIM stochasticity in [0, 1] (--sampler ddim)")
    p.add_argument("--spacing", choices=("uniform", "quadratic", "logsnr"), default=None,
                   help="where the steps lie in time: uniform, quadratic (dense at low noise) or logsnr "
                        "(default: the model's recommendation, else uniform)")
    p.add_argument("--churn", type=_finite_float, default=None,
                   help="noise injection before every step (Karras' S_churn / N; VEDA uses 0.4), 0 to sqrt(2)-1: "
                        "lift the state to a (1 + churn) times larger noise level, then step (0: none; default: "
                        "the model's recommendation, else 0)")
    p.add_argument("--churn-range", type=_time_range, default=None, metavar="LO,HI",
                   help="--churn only for steps starting at normalised times t/T in [LO, HI] (default: the "
                        "model's recommendation, else every step)")
    p.add_argument("--final", choices=("sample", "mean"), default=None,
                   help="last step: sample p(x | z_0) at t = 0, or mean: the network's clean estimate at the last "
                        "grid point, without noise (default: the model's recommendation, else sample)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="at most this many molecules per batch")
    p.add_argument("--batch-atoms", type=_positive_int, default=None,
                   help="atom budget per batch (default: automatic, from free GPU memory on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the denoiser first (pays off for large runs; numerics differ slightly)")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="skip the printed quality summary (large runs: keeps memory flat)")
    p.add_argument("--target", action="append", default=[], metavar="PROP=VALUE",
                   help="property target for a conditional model qm9-<prop> (repeatable): alpha [Bohr^3], "
                        "gap [meV], homo [meV], lumo [meV], mu [D], Cv [cal/(mol K)]; e.g. --model qm9-alpha "
                        "--target alpha=80. Without --target a conditional model draws the property values from "
                        "its training distribution p(c | N). Targets outside the training range are refused "
                        "unless --allow-extrapolation")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="accept --target values outside the model's training range (expect poor, "
                        "often disconnected molecules)")
    p.add_argument("--guidance", type=_finite_float, default=None,
                   help="classifier-free guidance weight w >= 0 (default: none, i.e. w = 0; needs a model "
                        "trained with train.context_dropout > 0)")
    p.add_argument("--num-atoms", type=_positive_int, default=None, help="fix the number of atoms")
    p.add_argument("--grid", default=None, help="also draw the valid samples as a PNG molecule grid")
    p.add_argument("--no-hydrogens", dest="add_hydrogens", action="store_false",
                   help="heavy-atom models with a bond channel (e.g. drugs): write the heavy atoms only, instead of "
                        "adding hydrogens with RDKit at positions it computes (the model's own output is "
                        "heavy atoms and bonds; the printed metrics are always of the model's own output)")
    p.add_argument("--hydrogen-placement", choices=("mmff", "rdkit"), default="mmff",
                   help="heavy-atom models: where the added hydrogens go: mmff (default; RDKit's positions, then "
                        "an MMFF94 minimisation of the hydrogens alone, heavy atoms fixed) or rdkit (RDKit's "
                        "computed positions only)")
    p.add_argument("--relax", choices=("mmff", "xtb"), default=None,
                   help="relax the written molecules (mmff or GFN2-xTB); the model's own metrics are printed "
                        "before relaxation, the relaxed ones separately and labelled")
    p.add_argument("--fix", action="append", default=[], metavar="FRAGMENT",
                   help="keep this fragment (.sdf/.xyz: element types and coordinates; models with a bond channel "
                        "also keep its bonds and need an .sdf) and generate the rest around it (inpainting); repeat "
                        "for a linker between fragments in their given pose")
    p.add_argument("--resample", type=_positive_int, default=1,
                   help="--fix: RePaint resampling, reverse steps per denoising step (harmonises the new atoms; "
                        "costs R x the steps)")
    p.add_argument("--grow", choices=("all", "hydrogen-bearing", "marked"), default="all",
                   help="--fix: fragment atoms that may bond to new atoms: all, those carrying H in the fragment, "
                        "or those listed (1-based) in the SDF field <moldiff_grow>; enforced by resampling")
    p.add_argument("--max-tries", type=_positive_int, default=3,
                   help="--fix: sampling rounds for molecules breaking --grow or (linkers) connectivity")


def _output_format(out: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in ("sdf", "xyz"):
        raise CLIError(f"cannot tell the output format from {out!r}: use a .sdf or .xyz name or --format")
    return suffix


def _run_sample(args: argparse.Namespace) -> int:
    """Sample, streaming batches to ``--out`` in order; sharded over processes under ``torchrun``."""
    from moldiff.conditioning import parse_targets
    from moldiff.pipeline import load_model
    from moldiff.sampling.sharding import Shard, init_sharding, resolve_device

    fmt = _output_format(args.out, args.format)
    if not Path(args.out).parent.resolve().is_dir():
        raise CLIError(f"output directory does not exist: {Path(args.out).parent}")
    _check_output(args.out, "--out")  # before any work: a directory or read-only folder would lose the samples
    if args.grid and not args.evaluate:
        raise CLIError("--grid draws the evaluated molecules: drop --no-evaluate")
    if args.grid:
        _check_output(args.grid, "--grid")
    if args.relax == "xtb":
        from moldiff.relax import XTB_MISSING, xtb_available

        if not xtb_available():
            raise CLIError(XTB_MISSING)
    device = resolve_device(args.device, Shard.from_env())
    model = load_model(args.model, device=device)
    if args.fix:
        return _sample_inpaint(args, model, fmt, device)
    if args.target or args.guidance is not None:
        if not model.conditioning:
            raise CLIError(f"model {args.model!r} is unconditional: --target/--guidance need a conditional model")
    target = parse_targets(args.target) if args.target else None
    if model.conditioning and not target:
        props = ", ".join(model.conditioning)
        print(f"moldiff: note: no --target given: {props} values are drawn from the training distribution "
              f"p(c | N); fix them with --target {model.conditioning[0]}=VALUE", file=sys.stderr)
    if args.compile:
        model.process.denoiser.compile(dynamic=True)
    shard = init_sharding(device)
    try:
        return _sample_to_file(args, model, fmt, target, device, shard)
    finally:
        if shard.world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _sample_to_file(args: argparse.Namespace, model: MolDiff, fmt: str, target: dict[str, float] | None,
                    device: torch.device, shard: Shard) -> int:
    """Rank 0 streams the batches, gathered in order, to ``--out`` and prints the summary."""
    import warnings

    from moldiff.io import molecule_writer
    from moldiff.pipeline import to_rdkit
    from moldiff.sampling.sharding import gather_in_order

    config = model.recommended_sampling(  # each recommendation overridden by its flag; validated once, here
        method=args.sampler, steps=args.steps, spacing=args.spacing, churn=args.churn, churn_range=args.churn_range,
        final=args.final, eta=args.eta, seed=args.seed, batch_size=args.batch_size,
        max_atoms_per_batch=args.batch_atoms)
    method, steps = config.method, config.steps
    molecules: list = []
    with warnings.catch_warnings(record=True) as caught:  # e.g. a target outside the training range
        warnings.simplefilter("always", UserWarning)
        batches = model.iter_samples(
            args.num, num_atoms=args.num_atoms, progress=shard.is_main, target=target, guidance=args.guidance,
            device=device, rank=shard.rank, world_size=shard.world_size,
            allow_extrapolation=args.allow_extrapolation, config=config, with_bonds=True,
        )  # arguments are checked here, before any sampling; (symbols, pos, bonds or None) per molecule
        ordered = gather_in_order(batches, shard)
        if not shard.is_main:
            for _ in ordered:  # take part in every gather round; rank 0 writes
                pass
            return 0
        spacing = "" if config.spacing == "uniform" else f" ({config.spacing} spacing)"
        spacing += f", churn {config.churn:g}" if config.churn else ""
        spacing += ", final mean" if config.final == "mean" else ""
        print(f"sampling {args.num} molecules: {method}, {steps or model.process.timesteps} steps{spacing}, {device}"
              + (f", {shard.world_size} processes" if shard.world_size > 1 else ""), file=sys.stderr)
        relaxed: list = []  # (symbols, pos) after --relax, and the RelaxResults
        with molecule_writer(args.out, fmt) as write:
            for batch in ordered:
                if args.evaluate:
                    molecules.extend(_sampled_records(batch))
                if model.has_bonds:  # the model's bonds (+ RDKit's hydrogens for heavy-atom models)
                    add_h = args.add_hydrogens and model.adds_hydrogens
                    mols = [to_rdkit(sym, pos, b, add_hydrogens=add_h, hydrogen_placement=args.hydrogen_placement)
                            for sym, pos, b in batch]
                    if args.relax:
                        mols = _relax_mols(mols, args.relax, relaxed)
                    write([_symbols_pos(m) for m in mols] if fmt == "xyz" else mols)
                    continue
                batch = [(sym, pos) for sym, pos, _ in batch]
                if args.relax:
                    batch = _relax_batch(batch, args.relax, relaxed)
                write(batch if fmt == "xyz" else [to_rdkit(sym, pos) for sym, pos in batch])
            total = write.written
    for w in caught:
        print(f"moldiff: warning: {w.message}", file=sys.stderr)
    print(f"wrote {total} molecules to {args.out}" + (f" ({args.relax}-relaxed)" if args.relax else ""))
    note = None
    if model.config.data.remove_h:
        note = ("note: a heavy-atom model: EDM's stability counts hydrogens, so only validity (by the model's bonds "
                "where it has them) is meaningful here; the drug-like table: moldiff evaluate FILE --reference DATASET")
    return _report(args, molecules, relaxed, "model samples", note)


def _report(args: argparse.Namespace, records: list, relaxed: list, what: str, note: str | None = None) -> int:
    """Print what follows the writing of samples; return exit code 0.

    The relaxation summary, the model's own metrics (``what``, then ``note``), the relaxed molecules'
    metrics (labelled post-processing) and the ``--grid`` picture.
    """
    if args.relax:
        from moldiff.relax import format_relax_summary, summarize_relaxation

        print(format_relax_summary(summarize_relaxation([r for _, r in relaxed])))
    if not args.evaluate:
        return 0
    from moldiff.evaluation.report import evaluate_molecules, format_summary

    table, summary = evaluate_molecules(records)
    print((f"{what} (before relaxation):\n" if args.relax else "") + format_summary(summary))
    if note:
        print(note)
    if args.relax:
        _, relaxed_summary = evaluate_molecules([m for m, _ in relaxed])
        print(f"after {args.relax} relaxation (post-processing, not a model metric):\n"
              + format_summary(relaxed_summary))
    if args.grid:
        from moldiff.evaluation.draw import draw_grid

        print(f"drew {draw_grid(table, args.grid)} molecules to {args.grid}")
    return 0


def _sample_inpaint(args: argparse.Namespace, model: MolDiff, fmt: str, device: torch.device) -> int:
    """``moldiff sample --fix``: generate around fixed fragments, write, summarise."""
    from moldiff.fragments import plan_inpainting, run_inpainting
    from moldiff.io import molecule_writer
    from moldiff.pipeline import to_rdkit

    if args.target or args.guidance is not None:
        raise CLIError("--fix does not combine with --target/--guidance yet")
    if args.eta:
        raise CLIError("--fix does not take --eta")
    if args.churn or args.churn_range is not None or args.final not in (None, "sample"):  # (a model's
        # recommended churn / final are not used here: inpainting runs its own reverse loop)
        raise CLIError("--fix does not take --churn/--churn-range/--final yet")
    plan = plan_inpainting(model, args.fix, args.num, num_atoms=args.num_atoms, steps=args.steps, seed=args.seed,
                           method=args.sampler, grow=args.grow)  # fragments and arguments checked here
    mode = "model trained for fixed atoms" if model.process.fragment_input else "RePaint replacement"
    print(f"inpainting {args.num} molecules around {plan.num_fragments} fragment(s) ({plan.fragment.num_atoms} "
          f"atoms; {mode}): {plan.method}, {plan.steps or model.process.timesteps} steps, resample {args.resample}, "
          f"{device}", file=sys.stderr)
    mols, out = run_inpainting(model, plan, seed=args.seed, resample=args.resample, max_tries=args.max_tries,
                               device=device, progress=True)
    m = int(out.fixed[out.batch == 0].sum())
    written, relaxed = mols, []
    if model.has_bonds:  # the model's bonds (the fragment's among its atoms), RDKit's hydrogens for heavy-atom models
        return _write_inpainted_bonds(args, model, fmt, mols, out, m)
    if args.relax:
        from moldiff.relax import relax_molecules

        results = relax_molecules([to_rdkit(sym, pos) for sym, pos in mols], args.relax,
                                  fixed_atoms=list(range(m)), progress=True)
        written = [(sym, r.mol.GetConformer().GetPositions() if r.ok else pos)
                   for (sym, pos), r in zip(mols, results, strict=True)]
        relaxed = results
    with molecule_writer(args.out, fmt) as write:
        if fmt == "xyz":
            write([(sym, pos, f"fragment atoms 1-{m}") for sym, pos in written])
        else:
            rd = []
            for (sym, pos), ok in zip(written, out.accepted.tolist(), strict=True):
                mol = to_rdkit(sym, pos)
                mol.SetProp("moldiff_fixed_atoms", f"1-{m}")
                mol.SetIntProp("moldiff_constraints_met", int(ok))
                rd.append(mol)
            write(rd)
    print(f"wrote {len(written)} molecules to {args.out} (atoms 1-{m} are the fragment, exactly as given)"
          + (f", {args.relax}-relaxed with the fragment fixed" if args.relax else ""))
    if not bool(out.accepted.all()):
        print(f"moldiff: warning: {int((~out.accepted).sum())} molecules still break --grow/connectivity after "
              f"{args.max_tries} rounds (marked moldiff_constraints_met=0)", file=sys.stderr)
    if args.relax:
        from moldiff.relax import format_relax_summary, summarize_relaxation

        print(format_relax_summary(summarize_relaxation(relaxed)))
    if not args.evaluate:
        return 0
    from moldiff.evaluation.report import evaluate_molecules, format_summary

    table, summary = evaluate_molecules(mols)
    print(("completions (before relaxation):\n" if args.relax else "") + format_summary(summary))
    if args.relax:
        _, relaxed_summary = evaluate_molecules(written)
        print(f"after {args.relax} relaxation (post-processing, not a model metric):\n"
              + format_summary(relaxed_summary))
    if args.grid:
        from moldiff.evaluation.draw import draw_grid

        print(f"drew {draw_grid(table, args.grid)} molecules to {args.grid}")
    return 0


def _write_inpainted_bonds(args: argparse.Namespace, model: MolDiff, fmt: str, mols: list, out: InpaintOutput,
                           m: int) -> int:
    """``--fix`` with a bond-channel model: write RDKit molecules with the model's bonds, relax them, summarise."""
    from moldiff.io import molecule_writer
    from moldiff.pipeline import to_rdkit

    triples = [(sym, pos, b) for (sym, pos), b in zip(mols, out.split_bonds(), strict=True)]
    add_h = args.add_hydrogens and model.adds_hydrogens
    rd = [to_rdkit(sym, pos, b, add_hydrogens=add_h, hydrogen_placement=args.hydrogen_placement)
          for sym, pos, b in triples]  # hydrogens go after the atoms
    relaxed: list = []  # ((symbols, pos), RelaxResult) after --relax
    if args.relax:
        rd = _relax_mols(rd, args.relax, relaxed, fixed_atoms=list(range(m)))
    with molecule_writer(args.out, fmt) as write:
        if fmt == "xyz":
            write([(*_symbols_pos(mol), f"fragment atoms 1-{m}") for mol in rd])
        else:
            for mol, ok in zip(rd, out.accepted.tolist(), strict=True):
                mol.SetProp("moldiff_fixed_atoms", f"1-{m}")
                mol.SetIntProp("moldiff_constraints_met", int(ok))
            write(rd)
    print(f"wrote {len(rd)} molecules to {args.out} (atoms 1-{m} are the fragment, exactly as given, with its bonds)"
          + (f", {args.relax}-relaxed with the fragment fixed" if args.relax else ""))
    if not bool(out.accepted.all()):
        print(f"moldiff: warning: {int((~out.accepted).sum())} molecules still break --grow/connectivity after "
              f"{args.max_tries} rounds (marked moldiff_constraints_met=0)", file=sys.stderr)
    return _report(args, _sampled_records(triples) if args.evaluate else [], relaxed,  # the model's own bonds
                   "completions")


def _relax_batch(batch: list, method: str, relaxed: list) -> list:
    """Relax sampled ``(symbols, pos)`` molecules; appends ``(molecule, RelaxResult)`` to ``relaxed``.

    Bonds for MMFF come from EDM's distance rule on the sampled geometry; the written molecules get
    their bonds re-perceived from the relaxed geometry. Molecules that fail stay as sampled.
    """
    from moldiff.pipeline import to_rdkit
    from moldiff.relax import relax_molecules

    results = relax_molecules([to_rdkit(sym, pos) for sym, pos in batch], method)
    out = [(sym, r.mol.GetConformer().GetPositions() if r.ok else pos)
           for (sym, pos), r in zip(batch, results, strict=True)]
    relaxed.extend(zip(out, results, strict=True))
    return out


def _relax_mols(mols: list, method: str, relaxed: list, fixed_atoms: list[int] | None = None) -> list:
    """Relax RDKit molecules that carry a bond-channel model's own bonds (kept as they are).

    Appends ``((symbols, pos), RelaxResult)`` to ``relaxed``; molecules that fail stay as sampled.
    ``fixed_atoms``: atoms held fixed in every molecule (``--fix``: the fragment).
    """
    from rdkit import Chem

    from moldiff.relax import relax_molecules

    results = relax_molecules(mols, method, fixed_atoms=fixed_atoms)
    out = [Chem.Mol(r.mol) if r.ok else m for m, r in zip(mols, results, strict=True)]
    relaxed.extend(zip(map(_symbols_pos, out), results, strict=True))
    return out


def _symbols_pos(mol: object) -> tuple[list[str], object]:
    """``(symbols, pos)`` of an RDKit molecule with one conformer (e.g. after hydrogens were added)."""
    return [a.GetSymbol() for a in mol.GetAtoms()], mol.GetConformer().GetPositions()


def _sampled_records(batch: list) -> list:
    """Sampled ``(symbols, pos, bonds)`` as evaluation input: ``Molecule`` records carrying the model's bonds.

    Molecules of a model without a bond channel stay ``(symbols, pos)`` pairs (bonds by EDM's rule).
    """
    from moldiff.constants import BOND_ORDERS
    from moldiff.io import Molecule

    return [(sym, pos) if b is None else
            Molecule(name="", symbols=sym, pos=pos, bonds=[(i, j, BOND_ORDERS[c]) for i, j, c in b])
            for sym, pos, b in batch]


# ============================================================================ evaluate
def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from moldiff.evaluation.report import CHECKS

    p = sub.add_parser("evaluate", help="score molecules (EDM stability, validity, ...)")
    p.add_argument("file", help="SDF or multi-frame XYZ file (e.g. the output of moldiff sample)")
    p.add_argument("--json", default=None, help="write the summary as JSON")
    p.add_argument("--csv", default=None, help="write one row per molecule as CSV (input order)")
    p.add_argument("--reference", default=None,
                   help="novelty reference: 'qm9' (training-split SMILES) or a SMILES file (.txt/.txt.gz); "
                        "'moses' or a dataset built with 'moldiff data build' (e.g. moses2k) runs the drug-like "
                        "benchmark (MOSES metrics, distributions, PoseBusters, strain)")
    p.add_argument("--reference-size", type=int, default=10_000,
                   help="drug-like references: MOSES test molecules sampled for FCD/SNN/Frag/Scaf (0: all 176k)")
    p.add_argument("--checks", default="edm",
                   help=f"comma-separated checks (edm is always run): {', '.join(CHECKS)}; or 'all'")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="processes that score molecules in parallel (chunks of 1000 molecules)")
    p.add_argument("--grid", default=None, help="draw the valid molecules as a PNG molecule grid")


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from moldiff.evaluation import edm_reference_smiles, evaluate_molecules, load_reference_smiles
    from moldiff.evaluation.reference import REFERENCE_FILENAME, save_reference_smiles
    from moldiff.evaluation.report import CHECKS, format_summary, jsonable
    from moldiff.io import atomic_write, read_molecules

    names = args.checks.split(",")
    checks = list(CHECKS) if args.checks == "all" else [c.strip() for c in names if c.strip()]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise CLIError(f"unknown check(s) {', '.join(unknown)}; allowed: {', '.join(CHECKS)}, all")
    for opt in ("json", "csv", "grid"):  # before any work
        if getattr(args, opt):
            _check_output(getattr(args, opt), f"--{opt}")
    records = read_molecules(args.file, strict=False)
    if not records:
        raise CLIError(f"{args.file}: no molecules found")
    if all(r.error for r in records):  # nothing parsed: the file is unreadable as molecules
        raise CLIError(f"{args.file}: no readable molecule ({records[0].error})")
    if args.reference not in (None, "qm9") and not Path(args.reference).is_file():
        return _run_evaluate_druglike(args, records)
    reference = None
    if args.reference == "qm9":
        from moldiff.data.qm9 import data_root

        path = data_root() / "qm9" / REFERENCE_FILENAME
        if not path.is_file():  # regenerate EDM's way from the training split
            from moldiff.data.qm9 import load_qm9
            from moldiff.data.splits import get_split

            print(f"building the QM9 novelty reference {path} (once) ...", file=sys.stderr)
            qm9 = load_qm9(progress=False)
            train = [qm9.molecule(int(i)) for i in get_split("train")]
            save_reference_smiles(path, edm_reference_smiles(train))
        reference = load_reference_smiles(path)
    elif args.reference is not None:
        reference = load_reference_smiles(args.reference)
    table, summary = evaluate_molecules(records, reference_smiles=reference, checks=checks,
                                        workers=args.workers)
    print(f"{args.file}: {len(table)} molecules")
    print(format_summary(summary))
    if args.json:
        with atomic_write(args.json) as fh:
            json.dump(jsonable(summary), fh, indent=2)
    if args.csv:
        with atomic_write(args.csv) as fh:
            table.to_csv(fh, index=False)
    if args.grid:
        from moldiff.evaluation.draw import draw_grid

        print(f"drew {draw_grid(table, args.grid)} molecules to {args.grid}")
    return 0


def _run_evaluate_druglike(args: argparse.Namespace, records: list) -> int:
    """``moldiff evaluate --reference moses|DATASET``: the drug-like benchmark table."""
    import json

    from moldiff.data import data_root
    from moldiff.evaluation import druglike_benchmark as db
    from moldiff.evaluation.report import jsonable
    from moldiff.io import atomic_write

    if args.grid:
        raise CLIError("--grid is not available with a drug-like reference")
    ref = db.load_reference(args.reference, data_root(), n_test=args.reference_size)
    table, summary = db.benchmark_molecules(records, ref, workers=args.workers)
    print(f"{args.file}: {len(table)} molecules; reference {ref.name} (novelty: {ref.novelty_source}; "
          f"distributions: {ref.properties_source}; MOSES test sample {ref.info['moses_test_sample']})")
    print(db.format_drug_summary(summary))
    if args.json:
        with atomic_write(args.json) as fh:
            json.dump({"summary": jsonable(summary), "reference": {"name": ref.name, **ref.info}}, fh, indent=2)
    if args.csv:
        with atomic_write(args.csv) as fh:
            table.to_csv(fh, index=False)
    return 0


# ============================================================================ relax
def _add_relax_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("relax", help="relax molecules with MMFF94 (RDKit) or GFN2-xTB (tblite)")
    p.add_argument("file", help="input .sdf (or multi-frame .xyz: bonds from EDM's distance rule)")
    p.add_argument("--out", required=True, help="output file (.sdf or .xyz); failed molecules are written unchanged")
    p.add_argument("--format", choices=("sdf", "xyz"), default=None, help="default: from --out suffix")
    p.add_argument("--method", choices=("mmff", "xtb"), default="mmff",
                   help="mmff (fast, needs a valid bond graph) or xtb (GFN2-xTB, no bonds needed, slower)")
    p.add_argument("--fixed", default=None, help="comma-separated 1-based atom indices kept fixed (every molecule)")
    p.add_argument("--max-iters", type=_positive_int, default=None, help="optimiser iteration limit")
    p.add_argument("--json", default=None, help="write per-molecule energies and the summary as JSON")


def _parse_index_list(text: str, what: str) -> list[int]:
    """``"1,3,5"`` (1-based) -> ``[0, 2, 4]``."""
    try:
        idx = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what}: expected comma-separated 1-based atom indices, got {text!r}") from None
    if not idx or min(idx) < 1:
        raise CLIError(f"{what}: expected comma-separated 1-based atom indices, got {text!r}")
    return [i - 1 for i in idx]


def _read_rdkit_molecules(path: str) -> list:
    """RDKit molecules of an SDF (as written, unsanitised) or XYZ file (EDM bonds); ``None`` for bad records."""
    from moldiff.io import read_molecules
    from moldiff.pipeline import to_rdkit

    records = read_molecules(path, strict=False)
    if not records or all(r.error for r in records):
        raise CLIError(f"{path}: no readable molecule" + (f" ({records[0].error})" if records else ""))
    if Path(path).suffix.lower() == ".xyz":
        return [None if r.error else to_rdkit(r.symbols, r.pos) for r in records]
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():  # restores the caller's RDKit log levels
        mols = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    if len(mols) != len(records):
        raise CLIError(f"{path}: cannot match the SDF records ({len(records)}) to RDKit molecules ({len(mols)})")
    return [None if r.error else m for r, m in zip(records, mols, strict=True)]


def _relax_record(mol, res):
    """The (RDKit) molecule to write for one relaxation result, labelled with SDF properties."""
    out = res.mol if res.mol is not None else mol
    out.SetProp("moldiff_relax_method", res.method)
    out.SetProp("moldiff_relax_status", "relaxed" if res.ok else f"failed: {res.error}")
    if res.ok:
        out.SetDoubleProp("moldiff_energy_before_kcal", res.energy_before)
        out.SetDoubleProp("moldiff_energy_after_kcal", res.energy_after)
        out.SetIntProp("moldiff_relax_converged", int(res.converged))
    return out


def _run_relax(args: argparse.Namespace) -> int:
    import json

    from moldiff.io import atomic_write, molecule_writer
    from moldiff.relax import format_relax_summary, relax_molecules, summarize_relaxation

    fmt = _output_format(args.out, args.format)
    if not Path(args.out).parent.resolve().is_dir():
        raise CLIError(f"output directory does not exist: {Path(args.out).parent}")
    fixed = _parse_index_list(args.fixed, "--fixed") if args.fixed else None
    mols = _read_rdkit_molecules(args.file)
    results = relax_molecules(mols, args.method, fixed_atoms=fixed, max_iters=args.max_iters, progress=True)
    written = [_relax_record(m, r) for m, r in zip(mols, results, strict=True) if (r.mol or m) is not None]
    with molecule_writer(args.out, fmt) as write:
        if fmt == "sdf":
            write(written)
        else:
            write([([a.GetSymbol() for a in m.GetAtoms()], m.GetConformer().GetPositions(),
                    m.GetProp("moldiff_relax_status")) for m in written])
    summary = summarize_relaxation(results)
    print(f"wrote {len(written)} molecules to {args.out}")
    print(format_relax_summary(summary))
    for k, r in enumerate(results, start=1):
        if not r.ok:
            print(f"  molecule {k}: {r.error}", file=sys.stderr)
    if args.json:
        rows = [{"index": k, "ok": r.ok, "error": r.error, "energy_before_kcal": r.energy_before,
                 "energy_after_kcal": r.energy_after, "converged": r.converged, "rmsd": r.rmsd}
                for k, r in enumerate(results, start=1)]
        with atomic_write(args.json) as fh:
            json.dump({"summary": summary, "molecules": rows}, fh, indent=2, default=str)
    return 0


# ============================================================================ models
def _add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped models and what each can do, or describe one checkpoint")
    p.add_argument("model", nargs="?", default=None, metavar="NAME_OR_PATH",
                   help="a shipped model name or a checkpoint path (e.g. runs/tiny/last.pt): print its details "
                        "(default: one table of all shipped models)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _run_models(args: argparse.Namespace) -> int:
    import json

    from moldiff.model_card import describe_model, describe_shipped, format_details, format_table
    from moldiff.pipeline import shipped_models

    try:
        data = describe_model(args.model) if args.model is not None else describe_shipped()
    except ValueError as exc:  # unknown name, missing / corrupt / hostile / foreign file (nothing in it ran)
        text = _one_line(exc)
        if "shipped models:" not in text:
            text += f"; shipped models: {', '.join(shipped_models())} (or give a .pt path)"
        raise CLIError(text) from None
    if args.json:
        text = json.dumps(data if args.model is not None else {"models": data}, indent=2)
    else:
        text = format_details(data) if args.model is not None else format_table(data)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `moldiff models | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
    return 0


# ============================================================================ entry
def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="moldiff", description=DESCRIPTION, epilog=EXAMPLES["moldiff"], formatter_class=_Formatter)
    from moldiff import __version__

    parser.add_argument("--version", action="version", version=f"moldiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_parser(sub)
    _add_train_parser(sub)
    _add_sample_parser(sub)
    _add_evaluate_parser(sub)
    _add_relax_parser(sub)
    _add_models_parser(sub)
    _add_examples(parser, "moldiff")
    return parser.parse_args(argv)


DESCRIPTION = ("Generate 3D molecules with an E(3)-equivariant diffusion model (EDM): sample from the shipped "
               "QM9 models, train your own, and score molecules with EDM's metrics.")

#: ``--help`` examples per command (``moldiff <command> [<subcommand>]``).
EXAMPLES: dict[str, str] = {
    "moldiff": """quickstart:
  moldiff models                                         # the shipped models and what each can do
  moldiff sample --num 10 --out samples.sdf              # shipped QM9 model (seconds on a CPU)
  moldiff evaluate samples.sdf                           # EDM stability / validity / uniqueness
  moldiff train --config benchmarks/configs/tiny.yaml --out runs/tiny
run 'moldiff <command> --help' for each command's options and examples""",
    "moldiff data": """examples:
  moldiff data prepare
  moldiff data import my_molecules.sdf --name mine
  moldiff data build --moses train --sample 2000 --name moses2k""",
    "moldiff data prepare": """example:
  moldiff data prepare              # cache QM9 arrays (with derived bonds) and EDM's splits under data/qm9
  moldiff data prepare --no-bonds   # the same without deriving bonds (a few seconds instead of ~1 min)""",
    "moldiff data import": """example:
  moldiff data import my_molecules.sdf --name mine   # then set data.dataset: mine in a training config""",
    "moldiff data build": """examples:
  moldiff data build --smiles my.smi --name mine                         # one SMILES per line, or CSV (--column)
  moldiff data build --moses train --sample 100000 --name moses100k --workers 16   # random subset: training sets
  moldiff data build --moses train --sample 100000 --name moses100k --shard 3/8    # shard 3 of 8, then: data merge
  moldiff data build --geom rdkit_folder/drugs --name geom --conformers 5          # GEOM-Drugs pickles (trusted)
rerun the same command after a kill to resume; --limit N takes the first N rows (not a random sample)""",
    "moldiff data merge": """example:
  moldiff data merge moses100k      # after every `data build ... --shard k/N` has finished""",
    "moldiff train": """examples:
  moldiff train --config benchmarks/configs/tiny.yaml --out runs/tiny            # seconds, a smoke test
  moldiff train --config benchmarks/configs/tiny.yaml --out runs/tiny --resume   # continue a stopped run
  moldiff train --config my.yaml --out runs/ft --init qm9                        # fine-tune the shipped model
  moldiff train --config benchmarks/configs/tiny.yaml --condition alpha --out runs/alpha""",
    "moldiff sample": """examples:
  moldiff sample --num 10 --out samples.sdf                  # shipped unconditional QM9 model
  moldiff sample --model runs/tiny/last.pt --steps 50 --out mine.xyz
  moldiff sample --model qm9-alpha --target alpha=80 --num 10 --out alpha80.sdf
read the SDF with RDKit: Chem.SDMolSupplier("samples.sdf", sanitize=False) (some samples are hypervalent)""",
    "moldiff evaluate": """examples:
  moldiff evaluate samples.sdf
  moldiff evaluate samples.sdf --reference qm9 --checks all --json summary.json --csv molecules.csv""",
    "moldiff models": """examples:
  moldiff models                        # one table: dataset, elements, hydrogens, bonds, conditioning, sampler ...
  moldiff models drugs                  # everything about one model: config, training, provenance, parameters
  moldiff models runs/tiny/last.pt      # any checkpoint, training checkpoints included
  moldiff models --json                 # machine-readable (also with a name or path)""",
    "moldiff relax": """example:
  moldiff relax samples.sdf --out relaxed.sdf --method mmff""",
}


def _add_examples(parser: argparse.ArgumentParser, name: str) -> None:
    """Give ``parser`` and its subcommands (recursively) the one-line error, the formatter and examples."""
    parser.formatter_class = _Formatter
    if not isinstance(parser, _Parser):
        parser.__class__ = _Parser  # subparsers made by another parser class
    if parser.epilog is None and name in EXAMPLES:
        parser.epilog = EXAMPLES[name]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                _add_examples(sub, f"{name} {sub_name}")


_RUNNERS = {"data": "_run_data", "train": "_run_train", "sample": "_run_sample", "evaluate": "_run_evaluate",
            "relax": "_run_relax", "models": "_run_models"}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code.

    2 for bad input (one line ``moldiff: error: ...``; argparse's own errors exit with 2 too), 130
    after Ctrl-C and 143 after SIGTERM (one line; temporary files are removed, no partial output).
    """
    import time

    _STARTED[0] = time.time()
    args = _parse_args(argv)  # argparse exits with code 2 on malformed arguments
    tune_cpu_allocator()  # keep large freed tensors in the process (see moldiff.runtime)
    runner = globals()[_RUNNERS[args.command]]
    with _terminate_as_interrupt():
        try:
            return int(runner(args) or 0)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM via _terminate_as_interrupt
            signum = exc.signum if isinstance(exc, _Terminated) else int(signal.SIGINT)
            print(f"moldiff: interrupted ({signal.Signals(signum).name}){_interrupt_hint(args)}", file=sys.stderr)
            return 128 + signum
        except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
            print(f"moldiff: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        except (EOFError, *_corrupt_file_errors()) as exc:  # np.load of a damaged .npz (zip / zlib errors)
            print(f"moldiff: error: a data file is corrupt ({type(exc).__name__}: {_one_line(exc)}); rebuild it "
                  "(moldiff data prepare, or data import --overwrite)", file=sys.stderr)
            return 2
        except Exception as exc:  # a bug, not bad input: one line (MOLDIFF_DEBUG=1 shows the traceback)
            if os.environ.get("MOLDIFF_DEBUG"):
                raise
            print(f"moldiff: internal error: {type(exc).__name__}: {_one_line(exc)} (please report it; run with "
                  "MOLDIFF_DEBUG=1 for the traceback)", file=sys.stderr)
            return 1


def _corrupt_file_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged zip-based file (``.npz``) raises besides ``ValueError`` and ``OSError``."""
    import zipfile
    import zlib

    return (zipfile.BadZipFile, zlib.error)


def _one_line(exc: BaseException) -> str:
    """First line of an exception's message; ``OSError`` as ``path: reason``."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, KeyError) and exc.args:
        return f"missing key {exc.args[0]!r}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
