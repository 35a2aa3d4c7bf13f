"""Inpainting benchmark on drug-like scaffolds: keep test molecules' Murcko scaffold, regenerate the side chains.

For each of ``--num`` test-split molecules of a built drug-like dataset (``--dataset``, with bonds; a
seeded random subset), the Bemis-Murcko scaffold is the fixed fragment: RDKit's
``MurckoScaffold.GetScaffoldForMol`` on the heavy-atom molecule with the dataset's own bonds (ring
systems, the linkers between them and the atoms double-bonded to those), with the dataset's bonds
and coordinates. A heavy-atom model with a bond channel (``drugs``: ``data.remove_h``, categorical
bonds) regenerates the side chains around it with its recommended sampler and steps, for every
``--resample`` value. Skipped (and counted): molecules without a ring (empty scaffold), those whose
scaffold is the whole molecule, charged ones (the model generates no formal charges), ones over the
model's atom limit or RDKit cannot sanitise.

Size settings (``--sizes``): ``original`` (total heavy atoms = the original's) and ``prior``
(``p(N | N > m)`` from the model's size prior, ``m`` the scaffold's atoms). Reference for each
setting: unconstrained samples of the same sizes, same sampler.

Reported per row, all by the model's own bonds (RDKit sanitisation; hydrogens implicit, as RDKit
adds them when the molecules are written): valid; valid and connected (one piece); uniqueness
(distinct canonical SMILES among the valid connected); contains the scaffold (substructure match,
among the valid: about 100 % for completions, which keep the fragment's bonds); scaffold unchanged
(the molecule's own Murcko scaffold is the original's: no ring and no double bond on the
scaffold grown; among the valid connected); recovered (the original's canonical SMILES); fragment
exact (completions: the scaffold's symbols, coordinates and bonds bit-exact; checked, must be
100 %); wall time. Plus the interleaved timing block of the QM9 script (``inpainting.py``).
Steps are uniformly spaced in both kinds of rows (inpainting has no step spacing).

Writes ``benchmarks/results/inpainting_<dataset>.json`` and ``docs/inpainting_drugs.png`` (the
first valid completions, row by row, scaffold highlighted).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/quality/inpainting_drugs.py --model drugs --dataset moses30k \\
        --num 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common import (  # noqa: E402
    RESULTS,
    ROOT,
    draw_completions,
    fragment_exact,
    inpainting_timing,
    machine,
)


def murcko_atoms(symbols, bonds, formal_charges=None) -> list[int] | None:
    """Indices of the atoms of the Bemis-Murcko scaffold (RDKit ``GetScaffoldForMol``), sorted.

    ``symbols``: heavy atoms; ``bonds``: ``(i, j, code)`` among them (codes of
    ``moldiff.constants.BOND_ORDERS``: the molecule's own). ``[]`` for a molecule without a ring;
    ``None`` when RDKit cannot sanitise the molecule.
    """
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold
    from rdkit.rdBase import BlockLogs

    from moldiff.io import bonded_mol

    mol = Chem.Mol(bonded_mol(symbols, np.zeros((len(symbols), 3)), bonds, formal_charges))
    with BlockLogs():
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001 - reported as unsanitisable
            return None
    for a in mol.GetAtoms():  # atom properties survive RDKit's decomposition: the original indices
        a.SetIntProp("orig", a.GetIdx())
    return sorted(a.GetIntProp("orig") for a in MurckoScaffold.GetScaffoldForMol(mol).GetAtoms())


def reorder(symbols, pos, bonds, order):
    """The atoms ``order`` (in that order) with the bonds among them renumbered ``(i < j, code)``, sorted."""
    new = {int(old): k for k, old in enumerate(order)}
    kept = sorted((min(new[i], new[j]), max(new[i], new[j]), int(c)) for i, j, c in bonds if i in new and j in new)
    return [symbols[k] for k in order], np.asarray(pos, dtype=np.float64)[list(order)], kept


def score(symbols, pos, bonds, scaffold=None) -> dict:
    """Validity etc. of a heavy-atom molecule with its own bonds (codes); ``scaffold``: an RDKit query."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold
    from rdkit.rdBase import BlockLogs

    from moldiff.constants import BOND_ORDERS
    from moldiff.evaluation.validity import own_bond_mol

    with BlockLogs():
        mol, _ = own_bond_mol(symbols, pos, [(i, j, BOND_ORDERS[c]) for i, j, c in bonds])
        if mol is None:
            return {"valid": False, "connected": False, "smiles": None, "murcko": None, "contains_scaffold": None}
        return {"valid": True, "connected": len(Chem.GetMolFrags(mol)) == 1, "smiles": Chem.MolToSmiles(mol),
                "murcko": MurckoScaffold.MurckoScaffoldSmiles(mol=mol),
                "contains_scaffold": None if scaffold is None else mol.HasSubstructMatch(scaffold)}


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def summarise(scores, originals, tag, seconds) -> dict:
    """One result row from :func:`score` dicts of a run and of the originals (same order)."""
    vc = [s["valid"] and s["connected"] for s in scores]
    good = [s for s, ok in zip(scores, vc, strict=True) if ok]
    row = {
        "run": tag, "molecules": len(scores), "validity": _mean(s["valid"] for s in scores),
        "validity_connected": _mean(vc),
        "uniqueness": len({s["smiles"] for s in good}) / len(good) if good else None,
        "contains_scaffold": _mean(s["contains_scaffold"] for s in scores if s["valid"]),
        "scaffold_unchanged": _mean(s["murcko"] == o["murcko"] for s, o, ok in zip(scores, originals, vc, strict=True)
                                    if ok),
        "recovered": _mean(ok and s["smiles"] == o["smiles"] for s, o, ok in zip(scores, originals, vc, strict=True)),
        "seconds": round(seconds, 1), "seconds_per_molecule": round(seconds / len(scores), 3),
    }

    def pct(v):
        return "–" if v is None else f"{v:.1%}"

    print(f"{tag:>40s}: valid {pct(row['validity'])}  connected valid {pct(row['validity_connected'])}  "
          f"unique {pct(row['uniqueness'])}  contains scaffold {pct(row['contains_scaffold'])}  "
          f"scaffold unchanged {pct(row['scaffold_unchanged'])}  recovered {pct(row['recovered'])}  {seconds:.0f} s",
          file=sys.stderr)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="drugs", help="shipped model name or checkpoint path (heavy atoms + bonds)")
    p.add_argument("--dataset", default="moses30k", help="built drug-like dataset with bonds (name or directory)")
    p.add_argument("--num", type=int, default=100, help="test molecules")
    p.add_argument("--sizes", default="original,prior", help="comma-separated size settings: original, prior")
    p.add_argument("--resample", default="1", help="comma-separated RePaint resampling values")
    p.add_argument("--sampler", default=None, help="default: the model's recommended sampler")
    p.add_argument("--steps", type=int, default=None, help="default: the model's recommended steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="default: benchmarks/results/inpainting_<dataset>.json")
    p.add_argument("--timing-molecules", type=int, default=20,
                   help="molecules in the interleaved per-call timing (unconstrained vs inpainting, R=1)")
    p.add_argument("--picture", default=str(ROOT / "docs" / "inpainting_drugs.png"))
    args = p.parse_args(argv)
    settings = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not settings or set(settings) - {"original", "prior"}:
        p.error(f"--sizes takes original and/or prior, got {args.sizes!r}")
    resamples = [int(v) for v in args.resample.split(",") if v.strip()]

    import moldiff
    from moldiff.constants import BOND_ORDERS
    from moldiff.data import get_dataset
    from moldiff.evaluation.validity import own_bond_mol
    from moldiff.fragments import fragment_options, load_fragment
    from moldiff.io import MoleculeRecord, atomic_write
    from moldiff.sampling.inpaint import inpaint, sample_sizes_given_fragment

    torch.set_num_threads(1)
    model = moldiff.load_model(args.model)
    if not (model.has_bonds and model.config.data.remove_h):
        raise SystemExit(f"{args.model}: this benchmark needs a heavy-atom model with a bond channel "
                         "(data.remove_h, diffusion.bonds), e.g. drugs")
    method, steps = model.default_sampling
    method, steps = args.sampler or method, args.steps or steps
    ds = get_dataset(args.dataset)
    arrays = ds.load()
    if not arrays.has_bonds:
        raise SystemExit(f"{args.dataset}: the dataset stores no bonds")
    test = ds.split("test")
    heavy = arrays.subset(test).remove_hydrogens()
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    probs = model.node_distribution.probs
    originals, fragments, scaffolds, prior_sizes = [], [], [], []
    skipped = {"no ring": 0, "scaffold is the whole molecule": 0, "charged": 0, "over the model's atom limit": 0,
               "element outside the model's vocabulary": 0, "not sanitisable": 0,
               "size prior has no larger molecule": 0}
    for k in rng.permutation(heavy.num_molecules):
        k = int(k)
        symbols, pos = heavy.molecule(k)
        symbols, bonds = list(symbols), heavy.bonds(k)
        charges = None if heavy.formal_charge is None else heavy.formal_charge[heavy.ptr[k]:heavy.ptr[k + 1]]
        if charges is not None and np.any(charges != 0):
            skipped["charged"] += 1
            continue
        if len(symbols) > model.max_atoms:
            skipped["over the model's atom limit"] += 1
            continue
        if set(symbols) - set(model.elements):
            skipped["element outside the model's vocabulary"] += 1
            continue
        scaffold = murcko_atoms(symbols, bonds)
        if scaffold is None:
            skipped["not sanitisable"] += 1
            continue
        if not scaffold:
            skipped["no ring"] += 1
            continue
        if len(scaffold) == len(symbols):
            skipped["scaffold is the whole molecule"] += 1
            continue
        try:
            prior = int(sample_sizes_given_fragment(probs, len(scaffold), 1, gen)[0])
        except ValueError:
            skipped["size prior has no larger molecule"] += 1
            continue
        rest = [i for i in range(len(symbols)) if i not in set(scaffold)]
        # the original in the completions' atom order: scaffold first, then the side chains
        originals.append(reorder(symbols, pos, bonds, scaffold + rest))
        f_symbols, f_pos, f_bonds = reorder(symbols, pos, bonds, scaffold)
        fragments.append(MoleculeRecord(name=str(heavy.names[k]), symbols=f_symbols, pos=f_pos,
                                        bonds=[(i, j, BOND_ORDERS[c]) for i, j, c in f_bonds]))
        scaffolds.append(own_bond_mol(f_symbols, f_pos, fragments[-1].bonds)[0])
        prior_sizes.append(prior)
        if len(originals) == args.num:
            break
    if not originals:
        raise SystemExit(f"{args.dataset}: no test molecule with a scaffold and side chains")
    frags = [load_fragment(f, model.elements, **fragment_options(model)) for f in fragments]
    orig_scores = [score(*o, q) for o, q in zip(originals, scaffolds, strict=True)]
    sizes = {"original": [len(s) for s, _, _ in originals], "prior": prior_sizes}
    m_atoms = [f.num_atoms for f in fragments]
    print(f"{len(originals)} {args.dataset} test molecules ({sum(skipped.values())} skipped: "
          f"{', '.join(f'{v} {k}' for k, v in skipped.items() if v) or 'none'}); heavy atoms "
          f"{np.mean(sizes['original']):.1f} on average, scaffold {np.mean(m_atoms):.1f}, side chains "
          f"{np.mean(sizes['original']) - np.mean(m_atoms):.1f}; originals valid by their bonds "
          f"{np.mean([s['valid'] for s in orig_scores]):.0%}; sampler {method}, "
          f"{steps or model.process.timesteps} steps", file=sys.stderr)

    rows, picture = [], []
    for setting in settings:
        n_atoms = sizes[setting]
        t0 = time.perf_counter()
        uncond = [m for _, batch in model.iter_samples(len(n_atoms), steps=steps, seed=args.seed, num_atoms=n_atoms,
                                                        method=method, progress=True, with_bonds=True) for m in batch]
        scores = [score(*m, q) for m, q in zip(uncond, scaffolds, strict=True)]
        row = summarise(scores, orig_scores, f"unconstrained, {setting} sizes", time.perf_counter() - t0)
        rows.append({**row, "sizes": setting, "mean_atoms": float(np.mean(n_atoms))})
        for r in resamples:
            t0 = time.perf_counter()
            out = inpaint(model.process, frags, n_atoms, steps=steps, seed=args.seed, method=method, resample=r,
                          progress=True, max_tries=1)
            done = [([model.elements[i] for i in t.tolist()], p_.numpy()) for t, p_ in out.split()]
            model_bonds = out.split_bonds()
            exact = fragment_exact(done, fragments, frags, model_bonds)
            scores = [score(s, p_, b, q) for (s, p_), b, q in zip(done, model_bonds, scaffolds, strict=True)]
            row = summarise(scores, orig_scores, f"inpainting, {setting} sizes, resample {r}",
                            time.perf_counter() - t0)
            rows.append({**row, "sizes": setting, "mean_atoms": float(np.mean(n_atoms)), "resample": r,
                         "fragment_exact": float(np.mean(exact))})
            for (s, p_), b, f, sc, o in zip(done, model_bonds, fragments, scores, orig_scores, strict=True):
                rec = sc["valid"] and sc["connected"] and sc["smiles"] == o["smiles"]
                picture.append(((s, p_, b), f.num_atoms, f"{'recovered' if rec else 'new'} ({setting} sizes, R={r})"))
    n_pic = draw_completions(picture, Path(args.picture))  # the first valid completions, row by row
    # the rows' wall times come one after the other on a shared CPU: the two calls alternated (3 rounds)
    timing = inpainting_timing(model, frags, sizes["original"], steps, args.seed, method, args.timing_molecules)
    print(f"interleaved timing ({timing['molecules']} molecules): {timing}", file=sys.stderr)
    pic = Path(args.picture).resolve()
    picture_name = str(pic.relative_to(ROOT)) if pic.is_relative_to(ROOT) else str(pic)
    name = Path(args.dataset).name
    result = {
        "benchmark": f"inpainting_{name}", "machine": machine("cpu", torch.get_num_threads()),
        "model": args.model, "dataset": args.dataset, "sampler": method, "steps": steps or model.process.timesteps,
        # inpainting has no step spacing yet: both kinds of rows use uniform steps
        "spacing": "uniform", "model_recommended_spacing": getattr(model, "default_spacing", "uniform"),
        "seed": args.seed, "molecules": len(originals), "skipped": skipped,
        "mean_heavy_atoms": float(np.mean(sizes["original"])), "mean_scaffold_atoms": float(np.mean(m_atoms)),
        "distinct_scaffolds": len({s["murcko"] for s in orig_scores if s["valid"]}),
        "originals_valid_own_bonds": float(np.mean([s["valid"] for s in orig_scores])),
        "command": "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/quality/inpainting_drugs.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "rows": rows, "timing_interleaved": timing, "picture": picture_name if n_pic else None,
    }
    with atomic_write(args.json or RESULTS / f"inpainting_{name}.json") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
