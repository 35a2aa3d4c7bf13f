"""Fixed fragments for inpainting: reading them for a model, growth rules, and the high-level call.

The maths lives in :mod:`moldiff.sampling.inpaint`; this module turns files (or records) into
:class:`~moldiff.sampling.inpaint.Fragment` objects in a model's vocabulary, refuses fragments the
model cannot represent (one-line ``ValueError``), and builds the acceptance test that enforces
which fragment atoms may gain new neighbours and, for linkers, that the result is connected
(bonds from EDM's distance rule, :mod:`moldiff.evaluation.stability`).

Growth modes (``grow``):

* ``all``: any fragment atom may bond to generated atoms (no restriction).
* ``hydrogen-bearing``: only fragment heavy atoms that carry a hydrogen in the fragment file (by
  the file's bonds, else by the distance rule). Typical use: keep the scaffold with its hydrogens
  and remove the hydrogens where it should grow; those atoms then still count as hydrogen-bearing
  only if another H remains, so mark such atoms explicitly with ``marked`` when that matters.
* ``marked``: only the atoms listed (1-based, separated by spaces or commas) in the SDF data field
  ``moldiff_grow`` of the fragment file.

The restriction is enforced by rejection sampling (``max_tries`` rounds); molecules that still
violate it are returned and counted as not accepted.

Models with a bond channel keep the fragment's bonds exactly, so they need them: the fragment
must come as an SDF file (an XYZ fragment is refused). Aromatic bonds are kekulised with RDKit
(the training data's bonds are kekulised); a ring RDKit cannot kekulise keeps the aromatic code.
For a heavy-atom model (``data.remove_h``) the fragment's hydrogens and their bonds are dropped
(the written molecules get RDKit's hydrogens); ``hydrogen-bearing`` then uses the dropped ones.
With a bond channel the growth rule and connectivity are judged by the model's own bonds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from moldiff.io import MoleculeRecord, read_molecules
from moldiff.sampling.inpaint import Fragment, InpaintOutput, inpaint, sample_sizes_given_fragment

if TYPE_CHECKING:
    from moldiff.pipeline import MolDiff

#: Accepted values of ``grow``.
GROW_MODES: tuple[str, ...] = ("all", "hydrogen-bearing", "marked")
#: SDF data field listing the growable atoms (1-based) for ``grow="marked"``.
GROW_FIELD = "moldiff_grow"


def _marked_atoms(path: Path, n: int) -> list[int]:
    """0-based indices listed in the ``moldiff_grow`` field of the first record of an SDF file."""
    text = path.read_text(errors="replace").split("$$$$", 1)[0]
    m = re.search(rf"^>.*<{GROW_FIELD}>.*\n(.*)$", text, flags=re.M)
    if m is None:
        raise ValueError(f"fragment {path.name}: --grow marked needs the SDF data field <{GROW_FIELD}> "
                         "(1-based atom indices)")
    try:
        idx = [int(v) for v in re.split(r"[,\s]+", m.group(1).strip()) if v]
    except ValueError:
        raise ValueError(f"fragment {path.name}: <{GROW_FIELD}> must list 1-based atom indices") from None
    if not idx or min(idx) < 1 or max(idx) > n:
        raise ValueError(f"fragment {path.name}: <{GROW_FIELD}> indices must be between 1 and {n}")
    return [i - 1 for i in idx]


def _hydrogen_bearing(rec: MoleculeRecord) -> np.ndarray:
    from moldiff.evaluation.stability import bond_order_matrix

    n = rec.num_atoms
    adj = np.zeros((n, n), dtype=bool)
    if rec.bonds:
        for i, j, _ in rec.bonds:
            adj[i, j] = adj[j, i] = True
    else:
        adj = bond_order_matrix(rec.symbols, rec.pos) > 0
    is_h = np.array([s == "H" for s in rec.symbols])
    return (~is_h) & (adj & is_h[None, :]).any(1)


#: Bond orders of :class:`moldiff.io.Molecule` -> bond-type codes (``moldiff.constants.BOND_ORDERS``).
_ORDER_CODES = {1.0: 1, 2.0: 2, 3.0: 3, 1.5: 4}


def _kekulised(rec: MoleculeRecord, bonds: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``bonds`` with aromatic ones (code 4) kekulised by RDKit; unchanged when RDKit cannot kekulise them.

    Only the bonds marked aromatic are reassigned (the others are fixed in RDKit's Kekulé search).
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE, 4: Chem.BondType.AROMATIC}
    rw = Chem.RWMol()
    for k, sym in enumerate(rec.symbols):
        atom = Chem.Atom(sym)
        if rec.formal_charges is not None:
            atom.SetFormalCharge(int(rec.formal_charges[k]))
        rw.AddAtom(atom)
    for i, j, code in bonds:
        rw.AddBond(i, j, kinds[code])
        if code == 4:
            for item in (rw.GetBondBetweenAtoms(i, j), rw.GetAtomWithIdx(i), rw.GetAtomWithIdx(j)):
                item.SetIsAromatic(True)
    mol = rw.GetMol()
    with BlockLogs():
        try:
            mol.UpdatePropertyCache(strict=False)
            Chem.Kekulize(mol, clearAromaticFlags=True)
        except Exception:  # noqa: BLE001 - e.g. a pyrrole N without its H: keep the aromatic code
            return bonds
    back = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3, Chem.BondType.AROMATIC: 4}
    out = []
    for i, j, _ in bonds:
        bond = mol.GetBondBetweenAtoms(i, j)
        out.append((i, j, back.get(bond.GetBondType(), 4)))
    return out


def _fragment_bonds(rec: MoleculeRecord, name: str, strict: bool) -> list[tuple[int, int, int]] | None:
    """The record's bonds as codes 1-4 (aromatic ones kekulised when possible); ``None`` without bonds.

    A bond of another order (zero, dative, ...) raises with ``strict`` (a bond model), else gives ``None``.
    """
    if rec.bonds is None:
        return None
    bonds = []
    for i, j, order in rec.bonds:
        code = _ORDER_CODES.get(float(order))
        if code is None:
            if not strict:
                return None
            raise ValueError(f"fragment {name}: bond {int(i) + 1}-{int(j) + 1} has order {order}; moldiff knows "
                             "single, double, triple and aromatic bonds")
        bonds.append((int(i), int(j), code))
    if any(c == 4 for _, _, c in bonds):
        bonds = _kekulised(rec, bonds)
    return bonds


def load_fragment(
    source: str | Path | MoleculeRecord, elements: Sequence[str], grow: str = "all", *, need_bonds: bool = False,
    heavy_atoms: bool = False,
) -> Fragment:
    """A :class:`Fragment` in the vocabulary ``elements`` from an SDF/XYZ file (first record) or a record.

    Args:
        source: SDF/XYZ file or a record.
        elements: the model's vocabulary.
        grow: growth mode (see the module docstring).
        need_bonds: the model has a bond channel: the fragment must have bonds (SDF); they are
            kept exactly.
        heavy_atoms: the model generates heavy atoms only (``data.remove_h``): drop the fragment's
            hydrogens and their bonds (``grow="hydrogen-bearing"`` still sees them).

    The fragment's bonds (codes 1-4, aromatic ones kekulised when RDKit can) are read from an SDF
    file or a record with bonds whatever the model (``None`` for an XYZ file).

    Raises:
        ValueError: unreadable file, several molecules in the file, unknown element for the model,
            non-finite coordinates, bad ``grow``, no bonds for a bond model, an unknown bond order,
            no heavy atom for a heavy-atom model (one line, naming the fragment).
        FileNotFoundError: missing file.
    """
    if grow not in GROW_MODES:
        raise ValueError(f"unknown grow mode {grow!r}; allowed: {', '.join(GROW_MODES)}")
    if isinstance(source, MoleculeRecord):
        rec, name, path = source, source.name or "fragment", None
    else:
        path = Path(source)
        name = path.name
        try:
            recs = read_molecules(path, strict=True)
        except ValueError as exc:
            raise ValueError(f"fragment {exc}") from None
        if not recs:
            raise ValueError(f"fragment {name}: no molecule in the file")
        if len(recs) > 1:
            raise ValueError(f"fragment {name}: the file holds {len(recs)} molecules; give one per --fix")
        rec = recs[0]
    if rec.error is not None:
        raise ValueError(f"fragment {name}: {rec.error}")
    if rec.num_atoms == 0:
        raise ValueError(f"fragment {name}: no atoms")
    if not np.all(np.isfinite(rec.pos)):
        raise ValueError(f"fragment {name}: non-finite (NaN/inf) coordinate")
    if need_bonds and rec.bonds is None:
        raise ValueError(f"fragment {name}: this model generates bonds and keeps the fragment's, but the file has "
                         "none; give the fragment as an SDF file")
    keep = np.array([not (heavy_atoms and s == "H") for s in rec.symbols], dtype=bool)
    if not keep.any():
        raise ValueError(f"fragment {name}: no heavy atom (the model generates heavy atoms; hydrogens are dropped)")
    unknown = sorted({s for s, k in zip(rec.symbols, keep, strict=True) if k and s not in elements})
    if unknown:
        raise ValueError(f"fragment {name}: element(s) {', '.join(unknown)} not in the model's vocabulary "
                         f"({', '.join(elements)})")
    from moldiff.constants import ATOMIC_NUMBERS

    if grow == "all":
        growable = np.ones(rec.num_atoms, dtype=bool)
    elif grow == "hydrogen-bearing":
        growable = _hydrogen_bearing(rec)
    else:
        if path is None or path.suffix.lower() not in (".sdf", ".sd", ".mol"):
            raise ValueError(f"fragment {name}: --grow marked needs an SDF file with a <{GROW_FIELD}> field")
        growable = np.zeros(rec.num_atoms, dtype=bool)
        growable[_marked_atoms(path, rec.num_atoms)] = True
    bonds = _fragment_bonds(rec, name, strict=need_bonds)
    if not keep.all():  # a heavy-atom model: drop the hydrogens and their bonds, reindex
        new = np.cumsum(keep) - 1
        growable = growable[keep]
        if bonds is not None:
            bonds = [(int(new[i]), int(new[j]), c) for i, j, c in bonds if keep[i] and keep[j]]
    if not growable.any():
        raise ValueError(f"fragment {name}: no atom may grow under --grow {grow}")
    symbols = [s for s, k in zip(rec.symbols, keep, strict=True) if k]
    return Fragment(pos=torch.as_tensor(np.asarray(rec.pos)[keep], dtype=torch.float64),
                    types=torch.tensor([elements.index(s) for s in symbols]),
                    charges=torch.tensor([float(ATOMIC_NUMBERS[s]) for s in symbols]),
                    growable=torch.as_tensor(growable), bonds=bonds)


def _components(orders: np.ndarray) -> int:
    n = orders.shape[0]
    seen = np.zeros(n, dtype=bool)
    comps = 0
    for start in range(n):
        if seen[start]:
            continue
        comps += 1
        stack = [start]
        seen[start] = True
        while stack:
            i = stack.pop()
            for j in np.nonzero(orders[i])[0]:
                if not seen[j]:
                    seen[j] = True
                    stack.append(int(j))
    return comps


def make_acceptance(elements: Sequence[str], fragments: Sequence[Fragment], require_connected: bool) -> Any:
    """``accept(InpaintOutput) -> [B] bool`` for growth restrictions and (linkers) connectivity, or ``None``.

    A molecule is rejected when a generated atom is bonded (EDM distance rule; a bond-channel
    model's own bonds when the output has them) to a fixed atom that may not grow, or, with
    ``require_connected``, when its bond graph is not one connected piece.
    """
    from moldiff.evaluation.stability import bond_order_matrix

    restricted = any(not bool(f.growable.all()) for f in fragments)  # type: ignore[union-attr]
    if not restricted and not require_connected:
        return None

    def accept(out: InpaintOutput) -> torch.Tensor:
        ok = []
        model_bonds = out.split_bonds() if out.has_bonds else None
        for b, (types, pos) in enumerate(out.split()):
            frag = fragments[b] if len(fragments) > 1 else fragments[0]
            if model_bonds is not None:  # the model's own bonds
                orders = np.zeros((len(types), len(types)), dtype=np.int64)
                for i, j, code in model_bonds[b]:
                    orders[i, j] = orders[j, i] = code
            else:
                symbols = [elements[i] for i in types.tolist()]
                orders = bond_order_matrix(symbols, pos.numpy())
            m = frag.num_atoms
            blocked = ~frag.growable.numpy()  # type: ignore[union-attr]
            good = not (orders[:m][blocked][:, m:] > 0).any()
            if good and require_connected:
                good = _components(orders) == 1
            ok.append(good)
        return torch.tensor(ok, dtype=torch.bool)

    return accept


def fragment_options(model: MolDiff) -> dict[str, bool]:
    """:func:`load_fragment`'s ``need_bonds`` / ``heavy_atoms`` for ``model``."""
    return {"need_bonds": bool(model.has_bonds), "heavy_atoms": bool(model.config.data.remove_h)}


@dataclass
class InpaintPlan:
    """Checked inputs of an inpainting run (see :func:`plan_inpainting`)."""

    fragment: Fragment
    counts: torch.Tensor
    method: str
    steps: int | None
    accept: Any
    num_fragments: int


def plan_inpainting(
    model: MolDiff, fragments: Sequence[str | Path | MoleculeRecord | Fragment] | Fragment, num: int,
    num_atoms: int | Sequence[int] | None = None, steps: int | None = None, seed: int | None = 0,
    method: str | None = None, grow: str = "all", require_connected: bool | None = None,
) -> InpaintPlan:
    """Read and check fragments and arguments (``ValueError`` on bad input); draws the atom counts.

    See :func:`inpaint_molecules` for the arguments.
    """
    if num < 1:
        raise ValueError(f"number of molecules must be >= 1, got {num}")
    items = [fragments] if isinstance(fragments, Fragment) else list(fragments)
    if not items:
        raise ValueError("inpainting needs at least one fragment")
    elements = model.elements
    frags = [f if isinstance(f, Fragment) else load_fragment(f, elements, grow, **fragment_options(model))
             for f in items]
    frag = Fragment.combine(frags) if len(frags) > 1 else frags[0]
    m, limit = frag.num_atoms, model.max_atoms
    if m >= limit:
        raise ValueError(f"the fragment{'s have' if len(frags) > 1 else ' has'} {m} atoms; the model generates "
                         f"at most {limit} atoms in all")
    if model.conditioning:
        raise ValueError(f"inpainting with the conditional model {model.name!r} is not supported yet")
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    if num_atoms is None:
        counts = sample_sizes_given_fragment(model.node_distribution.probs, m, num, gen)
    else:
        counts = torch.as_tensor([num_atoms] * num if isinstance(num_atoms, int) else list(num_atoms))
        if counts.numel() != num or int(counts.min()) <= m or int(counts.max()) > limit:
            raise ValueError(f"number of atoms must be larger than the fragment ({m}) and at most the model's "
                             f"limit {limit}")
    rec_method, rec_steps = model.default_sampling
    method = method or rec_method
    steps = steps or rec_steps
    T = model.process.timesteps
    if steps is not None and not 1 <= int(steps) <= T:
        raise ValueError(f"--steps must be between 1 and T={T}, got {steps}")
    if require_connected is None:
        require_connected = len(frags) > 1
    return InpaintPlan(fragment=frag, counts=counts, method=method, steps=steps,
                       accept=make_acceptance(elements, [frag], require_connected), num_fragments=len(frags))


def run_inpainting(
    model: MolDiff, plan: InpaintPlan, seed: int | None = 0, resample: int = 1, max_tries: int = 3,
    device: str | torch.device | None = None, progress: bool = False, known_noise: str = "fresh",
) -> tuple[list[tuple[list[str], np.ndarray]], InpaintOutput]:
    """Sample a checked :class:`InpaintPlan`; returns ``(molecules, output)`` as :func:`inpaint_molecules`."""
    out = inpaint(model.process, plan.fragment, plan.counts, steps=plan.steps, seed=seed, method=plan.method,
                  resample=resample, device=device, accept=plan.accept,
                  max_tries=max_tries if plan.accept is not None else 1, progress=progress, known_noise=known_noise)
    elements = model.elements
    mols = [([elements[i] for i in t.tolist()], p.numpy()) for t, p in out.split()]
    return mols, out


def inpaint_molecules(
    model: MolDiff, fragments: Sequence[str | Path | MoleculeRecord | Fragment] | Fragment, num: int,
    num_atoms: int | Sequence[int] | None = None, steps: int | None = None, seed: int | None = 0,
    method: str | None = None, resample: int = 1, grow: str = "all", max_tries: int = 3,
    require_connected: bool | None = None, device: str | torch.device | None = None, progress: bool = False,
) -> tuple[list[tuple[list[str], np.ndarray]], InpaintOutput]:
    """Generate ``num`` molecules around the given fragment(s) with ``model``.

    Several fragments are combined into one fixed set in their given relative pose (linker
    design); the generated atoms then have to join them (``require_connected``, default on for
    two or more fragments).

    Args:
        model: a loaded :class:`~moldiff.pipeline.MolDiff`.
        fragments: fragment files / records / :class:`Fragment` objects (all kept in every molecule).
        num: number of molecules.
        num_atoms: total atom count(s) (default: ``p(N | N > m)`` from the model's size prior).
        steps: denoising steps (default: the model's recommended count).
        seed: RNG seed.
        method: sampler (default: the model's recommended one).
        resample: RePaint resampling ``R`` (reverse steps per grid step).
        grow: growth mode for fragments given as files (see the module docstring).
        max_tries: sampling rounds for molecules that violate the growth rule / connectivity.
        require_connected: reject disconnected results (default: ``True`` for >= 2 fragments).
        device: where to run.
        progress: tqdm bar over denoising steps.

    Returns:
        ``(molecules, output)``: ``(symbols, pos)`` pairs with the fragment's atoms first, exactly as
        given, and the raw :class:`InpaintOutput` (``accepted``, ``tries``; a bond-channel model's
        bonds in ``output.split_bonds()``, the fragment's among its atoms).
    """
    plan = plan_inpainting(model, fragments, num, num_atoms=num_atoms, steps=steps, seed=seed, method=method,
                           grow=grow, require_connected=require_connected)
    return run_inpainting(model, plan, seed=seed, resample=resample, max_tries=max_tries, device=device,
                          progress=progress)
