"""``moldiff data build`` and ``moldiff data merge``: argument parsing for :mod:`moldiff.data.conformers`.

``moldiff.cli`` adds these subcommands with :func:`add_build_parsers` and runs them with
:func:`run_build_command`; the logic lives in :mod:`moldiff.data.conformers` and
:mod:`moldiff.data.geom`.
"""

from __future__ import annotations

import argparse
import sys

from moldiff.argtypes import positive_int
from moldiff.data.conformers import DRUG_ELEMENTS, MOSES_SETS

_BUILD_HELP = """\
Build a 3D dataset from SMILES: RDKit ETKDGv3 conformers optimised with MMFF94, hydrogens added,
bonds (kekulised) and formal charges kept. Resumable: a rerun with the same arguments skips the
chunks already built. Sharded: run `--shard k/N` for k = 1..N (e.g. a cluster job array), then
`moldiff data merge NAME`. Bad SMILES and failed embeddings are skipped and written to
<root>/NAME/processed/rejects.tsv with the reason.

GEOM-Drugs: `--geom DIR` reads the published RDKit pickles (rdkit_folder/drugs/*.pickle).
Pickles can execute code when loaded: only read files from a source you trust.
"""


_positive_int = positive_int


def add_build_parsers(dsub: argparse._SubParsersAction) -> None:
    """Add ``build`` and ``merge`` to the ``moldiff data`` subparsers."""
    b = dsub.add_parser("build", help="build a 3D dataset from SMILES (RDKit conformers) or GEOM-Drugs pickles",
                        description=_BUILD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--smiles", metavar="FILE", help="SMILES file: one per line, or CSV (.gz allowed)")
    src.add_argument("--moses", choices=MOSES_SETS, help="a MOSES set (needs: pip install --no-deps molsets)")
    src.add_argument("--geom", metavar="DIR", help="GEOM-Drugs RDKit pickles (directory or file; trusted files only)")
    b.add_argument("--name", required=True, help="dataset name (used as data.dataset in configs)")
    b.add_argument("--root", default=None, help="data directory (default: moldiff's data dir)")
    b.add_argument("--column", default=None, help="CSV column holding the SMILES (default: 'smiles', any case)")
    b.add_argument("--limit", type=_positive_int, default=None,
                   help="use only the first N SMILES (a prefix: not representative of a sorted file such as MOSES "
                        "train; use --sample for training sets)")
    b.add_argument("--sample", type=_positive_int, default=None, metavar="N",
                   help="build a seeded random subset of N SMILES (--seed; after --limit; the same subset in every "
                        "shard and on resume)")
    b.add_argument("--conformers", type=_positive_int, default=None,
                   help="conformers per molecule (GEOM: keep the N with the highest Boltzmann weight; default "
                        "1 for SMILES, all for GEOM)")
    b.add_argument("--elements", default=",".join(DRUG_ELEMENTS), help="allowed elements, comma-separated")
    b.add_argument("--min-heavy-atoms", type=int, default=1)
    b.add_argument("--max-heavy-atoms", type=_positive_int, default=None)
    b.add_argument("--max-atoms", type=_positive_int, default=None, help="limit including hydrogens")
    b.add_argument("--seed", type=int, default=0, help="seed of the embeddings, of the split and of --sample")
    b.add_argument("--chunk-size", type=_positive_int, default=1000, help="molecules per resumable chunk")
    b.add_argument("--workers", type=_positive_int, default=1, help="processes")
    b.add_argument("--shard", default=None, metavar="k/N", help="build only shard k of N (then: data merge)")
    b.add_argument("--merge", action="store_true", help="merge after this shard (all shards must be done)")
    b.add_argument("--overwrite", action="store_true", help="discard an earlier build and dataset of that name")
    b.add_argument("--no-progress", dest="progress", action="store_false")
    m = dsub.add_parser("merge", help="merge the shards of `data build` into one dataset")
    m.add_argument("name", help="dataset name given to data build")
    m.add_argument("--root", default=None, help="data directory (default: moldiff's data dir)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")


def run_build_command(args: argparse.Namespace) -> int:
    """Run ``data build`` or ``data merge``; bad input raises ``ValueError`` / ``FileNotFoundError``."""
    from moldiff.data.conformers import BuildOptions, build_dataset, format_report, merge_build, parse_shard

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    if args.data_cmd == "merge":
        target, report = merge_build(args.name, root=args.root, overwrite=args.overwrite)
        print(format_report(report, target))
        return 0
    elements = tuple(e.strip() for e in args.elements.split(",") if e.strip())
    if args.geom is not None:
        from moldiff.data.geom import import_geom

        if args.sample is not None:
            raise ValueError("--sample works with --smiles and --moses; for GEOM use --limit")

        target, report = import_geom(args.geom, args.name, root=args.root, max_conformers=args.conformers,
                                     elements=elements, min_heavy_atoms=args.min_heavy_atoms,
                                     max_heavy_atoms=args.max_heavy_atoms, max_atoms=args.max_atoms,
                                     seed=args.seed, limit=args.limit, overwrite=args.overwrite)
        print(format_report(report, target))
        return 0
    opts = BuildOptions(num_conformers=args.conformers or 1, elements=elements, min_heavy_atoms=args.min_heavy_atoms,
                        max_heavy_atoms=args.max_heavy_atoms, max_atoms=args.max_atoms, seed=args.seed,
                        chunk_size=args.chunk_size)
    shard = parse_shard(args.shard)
    out = build_dataset(args.name, smiles_file=args.smiles, moses=args.moses, column=args.column, limit=args.limit,
                        sample=args.sample, options=opts, root=args.root, shard=shard, workers=args.workers,
                        overwrite=args.overwrite, merge=True if args.merge else None, progress=args.progress, log=log)
    if "dataset" in out:
        from pathlib import Path

        print(format_report(out, Path(out["dataset"])))
    else:
        print(f"shard {shard[0]}/{shard[1]}: {out['chunks_done'] + out['chunks_skipped']} of "
              f"{out['chunks_total']} chunks done; merge with: moldiff data merge {args.name}")
    return 0
