"""Geometry relaxation of molecules: MMFF94 (RDKit) or GFN2-xTB (``tblite``).

Relaxation changes the molecules a model produced; it is a post-processing option and its effect
is always reported and labelled separately (``moldiff relax``, ``moldiff sample --relax``), never
folded into a model's own metrics. :func:`optimize_hydrogens` is different: it moves only the
hydrogens RDKit adds to a heavy-atom model's output (never the model's own atoms), and is the
default placement of those hydrogens.

* ``mmff``: RDKit's MMFF94 force field. Fast (milliseconds per QM9 molecule) but it needs a valid
  bond graph: a molecule that fails RDKit sanitisation or lacks MMFF parameters is reported with
  ``error`` set and returned unchanged.
* ``xtb``: GFN2-xTB single points from ``tblite`` (optional extra ``pip install moldiff[xtb]``). It
  needs no bonds (only elements, positions, total charge). ``tblite`` only evaluates energies and
  gradients, so the geometry optimisation is ours: L-BFGS (``scipy.optimize``, bounded variant
  without bounds) over the free Cartesian coordinates, converged when the largest gradient
  component is below :data:`XTB_GRADIENT_TOL` Hartree/Bohr (xtb's "normal" level).

Energies are reported in kcal/mol for both methods; only differences (``after - before``) are
meaningful, and the two methods' absolute energies are not comparable. Atoms listed in
``fixed_atoms`` do not move.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

#: Relaxation methods.
METHODS: tuple[str, ...] = ("mmff", "xtb")
#: Default iteration limits (MMFF minimiser iterations / L-BFGS iterations).
DEFAULT_MAX_ITERS: dict[str, int] = {"mmff": 2000, "xtb": 300}
#: Convergence threshold of the xtb optimisation: largest gradient component (Hartree/Bohr).
XTB_GRADIENT_TOL = 1e-3
HARTREE_TO_KCAL = 627.509474
BOHR = 0.529177210903  # Å

#: One-line error when ``tblite`` is missing (names the extra).
XTB_MISSING = "GFN2-xTB relaxation needs the tblite package: pip install 'moldiff[xtb]' (or pip install tblite)"


@dataclass
class RelaxResult:
    """Relaxation of one molecule.

    Attributes:
        mol: the relaxed molecule (a copy with new coordinates); the unchanged input copy on failure.
        method: ``"mmff"`` or ``"xtb"``.
        energy_before: energy of the input geometry (kcal/mol; NaN on failure).
        energy_after: energy of the relaxed geometry (kcal/mol; NaN on failure).
        converged: whether the optimiser met its convergence criterion within ``max_iters``.
        iterations: optimiser iterations (xtb: L-BFGS iterations; mmff: an upper bound, counted in
            chunks of 200).
        rmsd: root-mean-square displacement of the atoms (Å, no alignment).
        error: why the molecule could not be relaxed (``None`` if it was).
    """

    mol: Any
    method: str
    energy_before: float = math.nan
    energy_after: float = math.nan
    converged: bool = False
    iterations: int = 0
    rmsd: float = math.nan
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the molecule was relaxed (``error is None``)."""
        return self.error is None

    @property
    def delta_energy(self) -> float:
        """``energy_after - energy_before`` (kcal/mol)."""
        return self.energy_after - self.energy_before


def xtb_available() -> bool:
    """Whether ``tblite`` (GFN2-xTB) can be imported."""
    try:
        import tblite.interface  # noqa: F401
    except ImportError:
        return False
    return True


def _fixed_lists(fixed_atoms: Any, n_mols: int) -> list[list[int]]:
    """Per-molecule fixed-atom index lists from ``None``, one index list (all molecules) or one per molecule."""
    if fixed_atoms is None:
        return [[] for _ in range(n_mols)]
    fixed = list(fixed_atoms)
    if not fixed or all(isinstance(i, (int, np.integer)) for i in fixed):
        return [[int(i) for i in fixed] for _ in range(n_mols)]
    if len(fixed) != n_mols:
        raise ValueError(f"fixed_atoms: got {len(fixed)} index lists for {n_mols} molecules")
    return [[int(i) for i in (f or [])] for f in fixed]


def relax_molecules(
    mols: Sequence[Any], method: str = "mmff", fixed_atoms: Any = None, max_iters: int | None = None,
    progress: bool = False, charge: int | None = None, threads: int = 1,
) -> list[RelaxResult]:
    """Relax RDKit molecules (with a 3D conformer) with MMFF94 or GFN2-xTB.

    Molecules that cannot be relaxed (sanitisation fails, no MMFF parameters, SCF failure, no
    conformer) come back with :attr:`RelaxResult.error` set and their input coordinates; nothing
    raises for a bad molecule.

    Args:
        mols: RDKit ``Mol`` objects with a conformer (explicit hydrogens; ``None`` entries are
            reported as errors).
        method: ``"mmff"`` or ``"xtb"``.
        fixed_atoms: atoms that stay fixed: ``None``, one list of 0-based indices used for every
            molecule, or one list per molecule.
        max_iters: optimiser iteration limit (default :data:`DEFAULT_MAX_ITERS`).
        progress: show a tqdm bar over molecules.
        charge: total charge for xtb (default: the sum of the atoms' formal charges).
        threads: OpenMP threads for xtb (default 1: QM9-sized molecules gain little from more, and
            a busy CPU loses a lot).

    Returns:
        One :class:`RelaxResult` per input molecule, in order.

    Raises:
        ValueError: unknown ``method``, bad ``max_iters`` / ``fixed_atoms``, or ``xtb`` without
            ``tblite`` installed (one-line message naming the extra).

    >>> from rdkit import Chem
    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("CO")); _ = AllChem.EmbedMolecule(m, randomSeed=0)
    >>> r = relax_molecules([m], "mmff")[0]
    >>> r.ok, r.converged, r.energy_after <= r.energy_before
    (True, True, True)
    """
    if method not in METHODS:
        raise ValueError(f"unknown relaxation method {method!r}; allowed: {', '.join(METHODS)}")
    if method == "xtb" and not xtb_available():
        raise ValueError(XTB_MISSING)
    iters = DEFAULT_MAX_ITERS[method] if max_iters is None else int(max_iters)
    if iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    fixed = _fixed_lists(fixed_atoms, len(mols))
    from rdkit.rdBase import BlockLogs

    fn = _relax_mmff if method == "mmff" else _relax_xtb
    out = []
    limits: Any = contextlib.nullcontext()
    if method == "xtb":  # tblite's OpenMP threads oversubscribe a busy CPU badly (20x slower seen on 2 cores)
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=int(threads), user_api="openmp")
    # failures are reported in RelaxResult.error instead of RDKit's log; BlockLogs restores the
    # caller's log levels on exit (EnableLog("rdApp.*") would switch on info/debug for the whole
    # process, which made PoseBusters' InChI check fail on valid molecules afterwards)
    with BlockLogs(), limits:
        for mol, fx in tqdm(list(zip(mols, fixed, strict=True)), desc=f"relaxing ({method})", unit="mol",
                            disable=not progress, leave=False):
            out.append(_relax_one(fn, mol, method, fx, iters, charge))
    return out


def _relax_one(fn: Any, mol: Any, method: str, fixed: list[int], iters: int, charge: int | None) -> RelaxResult:
    from rdkit import Chem

    if mol is None:
        return RelaxResult(mol=None, method=method, error="no molecule (unreadable record)")
    mol = Chem.Mol(mol)
    n = mol.GetNumAtoms()
    if mol.GetNumConformers() == 0 or n == 0:
        return RelaxResult(mol=mol, method=method, error="no 3D coordinates")
    bad = [i for i in fixed if not 0 <= i < n]
    if bad:
        return RelaxResult(mol=mol, method=method, error=f"fixed atom index {bad[0]} out of range for {n} atoms")
    pos0 = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)
    try:
        return fn(mol, pos0, method, sorted(set(fixed)), iters, charge)
    except Exception as exc:  # a bad molecule is reported, never crashes a batch
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RelaxResult(mol=mol, method=method, error=f"{type(exc).__name__}: {msg}")


def _set_positions(mol: Any, pos: np.ndarray) -> None:
    from rdkit.Geometry import Point3D

    conf = mol.GetConformer()
    for i, (x, y, z) in enumerate(pos.tolist()):
        conf.SetAtomPosition(i, Point3D(x, y, z))


def _rmsd(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).sum(1).mean()))


def _relax_mmff(mol: Any, pos0: np.ndarray, method: str, fixed: list[int], iters: int,
                charge: int | None) -> RelaxResult:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    work = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(work)
    except Exception as exc:  # RDKit raises several sanitisation error types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RelaxResult(mol=mol, method=method, error=f"sanitization failed: {msg}")
    if not AllChem.MMFFHasAllMoleculeParams(work):
        return RelaxResult(mol=mol, method=method, error="no MMFF94 parameters for this molecule")
    props = AllChem.MMFFGetMoleculeProperties(work)
    ff = AllChem.MMFFGetMoleculeForceField(work, props)
    for i in fixed:
        ff.AddFixedPoint(i)
    ff.Initialize()
    e0 = float(ff.CalcEnergy())
    not_converged = 1
    used = 0
    while used < iters:  # Minimize returns 1 while not converged; continue in chunks
        step = min(200, iters - used)
        not_converged = ff.Minimize(maxIts=step)
        used += step
        if not_converged == 0:
            break
    e1 = float(ff.CalcEnergy())
    pos1 = np.asarray(ff.Positions(), dtype=np.float64).reshape(-1, 3)
    pos1[fixed] = pos0[fixed]  # exactly, not to the minimiser's rounding
    _set_positions(mol, pos1)
    return RelaxResult(mol=mol, method=method, energy_before=e0, energy_after=e1, converged=not_converged == 0,
                       iterations=used, rmsd=_rmsd(pos0, pos1))


def _relax_xtb(mol: Any, pos0: np.ndarray, method: str, fixed: list[int], iters: int,
               charge: int | None) -> RelaxResult:
    # tblite gives GFN2-xTB energies and gradients at one geometry (single points) only; the
    # optimisation loop is ours: scipy's L-BFGS over the free Cartesian coordinates (in Bohr).
    from scipy.optimize import minimize
    from tblite.interface import Calculator

    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int32)
    if (numbers < 1).any() or (numbers > 86).any():
        return RelaxResult(mol=mol, method=method, error="GFN2-xTB covers elements H-Rn only")
    q = int(sum(a.GetFormalCharge() for a in mol.GetAtoms())) if charge is None else int(charge)
    n_el = int(numbers.sum()) - q
    uhf = n_el % 2  # odd electron count: one unpaired electron
    x0 = pos0 / BOHR
    free = np.ones(len(numbers), dtype=bool)
    free[fixed] = False
    calc = Calculator("GFN2-xTB", numbers, x0, charge=float(q), uhf=uhf)
    calc.set("verbosity", 0)
    state: dict[str, Any] = {"res": None, "n": 0}

    def energy_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        x = x0.copy()
        x[free] = flat.reshape(-1, 3)
        calc.update(positions=x)
        res = calc.singlepoint(state["res"])  # restart the SCF from the previous density
        state["res"], state["n"] = res, state["n"] + 1
        return float(res.get("energy")), np.asarray(res.get("gradient"))[free].ravel()

    e0, g0 = energy_grad(x0[free].ravel())
    if not free.any():
        return RelaxResult(mol=mol, method=method, energy_before=e0 * HARTREE_TO_KCAL,
                           energy_after=e0 * HARTREE_TO_KCAL, converged=True, rmsd=0.0)
    if np.abs(g0).max() < XTB_GRADIENT_TOL:
        opt_x, e1, n_it, conv = x0[free].ravel(), e0, 0, True
    else:
        opt = minimize(energy_grad, x0[free].ravel(), jac=True, method="L-BFGS-B",
                       options={"maxiter": iters, "gtol": XTB_GRADIENT_TOL, "ftol": 1e-12, "maxcor": 20})
        opt_x, e1, n_it = opt.x, float(opt.fun), int(opt.nit)
        conv = bool(np.abs(opt.jac).max() < XTB_GRADIENT_TOL)
    x = x0.copy()
    x[free] = opt_x.reshape(-1, 3)
    pos1 = x * BOHR
    pos1[fixed] = pos0[fixed]
    _set_positions(mol, pos1)
    return RelaxResult(mol=mol, method=method, energy_before=e0 * HARTREE_TO_KCAL,
                       energy_after=e1 * HARTREE_TO_KCAL, converged=conv, iterations=n_it,
                       rmsd=_rmsd(pos0, pos1))


def optimize_hydrogens(mol: Any, max_iters: int = 500) -> bool:
    """Move only the hydrogens of ``mol`` (in place) to their MMFF94 minimum, heavy atoms fixed.

    For heavy-atom models (``drugs``), whose hydrogens RDKit adds afterwards: ``Chem.AddHs(addCoords=
    True)`` places each hydrogen from its own atom's neighbours only, so e.g. a terminal ``=CH2``
    can come out twisted out of its double bond's plane (PoseBusters' double-bond flatness check).
    Minimising the hydrogens against the fixed heavy atoms puts them where the force field wants
    them without touching anything the model generated (heavy-atom coordinates are restored
    bit-exactly).

    Returns whether the hydrogens were optimised (``False``: no hydrogens, or MMFF94 cannot type the
    molecule; it is then left as it was).
    """
    from rdkit.Chem import AllChem

    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    if len(heavy) == mol.GetNumAtoms() or not AllChem.MMFFHasAllMoleculeParams(mol):
        return False
    props = AllChem.MMFFGetMoleculeProperties(mol)
    ff = AllChem.MMFFGetMoleculeForceField(mol, props, ignoreInterfragInteractions=False)
    if ff is None:
        return False
    pos0 = mol.GetConformer().GetPositions()
    for i in heavy:
        ff.AddFixedPoint(i)
    ff.Initialize()
    ff.Minimize(maxIts=max_iters)
    pos1 = np.asarray(ff.Positions(), dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(pos1).all():
        return False
    pos1[heavy] = pos0[heavy]
    _set_positions(mol, pos1)
    return True


def summarize_relaxation(results: Sequence[RelaxResult]) -> dict[str, Any]:
    """Counts and energy changes of a relaxation run (kcal/mol), for printing and JSON."""
    ok = [r for r in results if r.ok]
    d = np.array([r.delta_energy for r in ok], dtype=np.float64)
    rmsd = np.array([r.rmsd for r in ok], dtype=np.float64)
    return {
        "method": results[0].method if results else None,
        "molecules": len(results),
        "relaxed": len(ok),
        "failed": len(results) - len(ok),
        "converged": sum(r.converged for r in ok),
        "delta_energy_median_kcal": float(np.median(d)) if len(d) else math.nan,
        "delta_energy_mean_kcal": float(d.mean()) if len(d) else math.nan,
        "rmsd_median_angstrom": float(np.median(rmsd)) if len(rmsd) else math.nan,
    }


def format_relax_summary(summary: dict[str, Any]) -> str:
    """One-line human summary of :func:`summarize_relaxation`."""
    s = summary
    line = (f"relaxation ({s['method']}): {s['relaxed']}/{s['molecules']} relaxed, {s['converged']} converged, "
            f"{s['failed']} failed")
    if s["relaxed"]:
        line += (f"; energy change median {s['delta_energy_median_kcal']:+.2f} kcal/mol "
                 f"(mean {s['delta_energy_mean_kcal']:+.2f}); median displacement {s['rmsd_median_angstrom']:.3f} Å")
    return line
