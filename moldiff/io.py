"""Reading and writing molecule files: multi-frame XYZ and SDF.

Readers return :class:`Molecule` records. With ``strict=True`` the first malformed record
raises ``ValueError("<file>: record <k>: <problem>")``; with ``strict=False`` it is returned with
``error`` set and reading goes on. Writers are atomic: they write a temporary file in the target
directory and ``os.replace`` it, so an error never leaves a partial file behind.

This module imports no models (numpy and RDKit only).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from moldiff.constants import ATOMIC_NUMBERS, SYMBOLS

XYZ_SUFFIXES = (".xyz",)
SDF_SUFFIXES = (".sdf", ".sd", ".mol")
_FIELD_RE = re.compile(r"^>.*?<([^>]+)>")


@dataclass
class Molecule:
    """One molecule: the package's record type for molecules outside a model (files, evaluation, imports).

    Readers return it, :func:`write_xyz` and :func:`bonded_mol` write it, :mod:`moldiff.evaluation`
    normalises every accepted input to it and dataset imports read it (``docs/architecture.md``,
    "Molecule shapes"). Bonds and formal charges are optional: XYZ files have neither.

    Attributes:
        name: title / comment line (may be empty).
        symbols: ``n`` element symbols (a tuple once :mod:`moldiff.evaluation` has normalised it).
        pos: ``[n, 3]`` float64 positions in Å.
        bonds: ``(i, j, order)`` triples, 0-based atom indices, from SDF (order 1, 2, 3 or 1.5 for
            aromatic); ``None`` when the source has no bonds (XYZ, sampled molecules).
        properties: numeric SDF data fields (``> <name>``) of this record.
        error: why the record is malformed (lenient reading, evaluation input); ``None`` if it is fine.
        formal_charges: ``n`` integer formal charges from SDF; ``None`` for XYZ.
    """

    name: str
    symbols: Sequence[str]
    pos: np.ndarray
    bonds: list[tuple[int, int, float]] | None = None
    properties: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    formal_charges: list[int] | None = None

    @property
    def num_atoms(self) -> int:
        """Number of atoms ``n``."""
        return len(self.symbols)

    @property
    def n_atoms(self) -> int:
        """Number of atoms ``n`` (the name :mod:`moldiff.evaluation` uses)."""
        return len(self.symbols)


#: The former name of :class:`Molecule` (the same class).
MoleculeRecord = Molecule


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds.

    Args:
        path: final file path (its directory is created if needed).
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (ignored in binary mode).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_write(p) as fh:
    ...     _ = fh.write("hello")
    >>> p.read_text()
    'hello'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ============================================================================ reading
def read_molecules(path: str | Path, strict: bool = True) -> list[Molecule]:
    """Read every molecule of a multi-frame ``.xyz`` or an ``.sdf`` file.

    Args:
        path: the file; the format comes from the suffix (``.xyz``; ``.sdf``/``.sd``/``.mol``).
        strict: raise on the first malformed record instead of returning it with ``error`` set.

    Returns:
        One record per molecule, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown suffix, unreadable file, or (strict) a malformed record; the message
            is one line naming the file, the record number (1-based) and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in XYZ_SUFFIXES:
        return read_xyz(path, strict=strict)
    if suffix in SDF_SUFFIXES:
        return read_sdf(path, strict=strict)
    raise ValueError(f"{path}: unknown molecule format {suffix!r} (expected .xyz or .sdf)")


def _symbol(token: str) -> str:
    """Normalise an element token (``"c"``, ``"CL"``, ``"6"``) to a symbol; raise on unknown ones."""
    if token.isdigit():
        z = int(token)
        if z not in SYMBOLS:
            raise ValueError(f"unknown atomic number {z}")
        return SYMBOLS[z]
    sym = token[:1].upper() + token[1:].lower()
    if sym not in ATOMIC_NUMBERS:
        raise ValueError(f"unknown element {token!r}")
    return sym


def _check_positions(pos: np.ndarray) -> None:
    if not np.all(np.isfinite(pos)):
        raise ValueError("non-finite (NaN/inf) coordinate")


def _read_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path}: cannot read file ({type(exc).__name__})") from None


def _parse_count(line: str) -> int | None:
    parts = line.split()
    if len(parts) == 1 and parts[0].isdigit():
        return int(parts[0])
    return None


def read_xyz(path: str | Path, strict: bool = True) -> list[Molecule]:
    """Read a (multi-frame) XYZ file: ``n`` / comment / ``n`` lines ``Sym x y z [...]`` per frame.

    Symbols may also be atomic numbers; QM9's ``*^`` exponent notation is accepted. See
    :func:`read_molecules` for ``strict`` and the errors raised.
    """
    path = Path(path)
    lines = _read_text(path)
    records: list[Molecule] = []
    i, k = 0, 0
    while i < len(lines):
        if not lines[i].strip():  # blank lines between/after frames
            i += 1
            continue
        k += 1
        name = lines[i + 1].strip() if i + 1 < len(lines) else ""
        try:
            n = _parse_count(lines[i])
            if n is None:
                raise ValueError(f"line {i + 1}: expected the atom count, got {lines[i].strip()[:40]!r}")
            symbols, pos, i = _parse_xyz_atoms(lines, i + 2, n)
            records.append(Molecule(name=name, symbols=symbols, pos=pos))
        except ValueError as exc:
            if strict:
                raise ValueError(f"{path}: record {k}: {exc}") from None
            records.append(Molecule(name=name, symbols=[], pos=np.zeros((0, 3)), error=str(exc)))
            i = _next_header(lines, i + 2)
    return records


def _parse_xyz_atoms(lines: list[str], start: int, n: int) -> tuple[list[str], np.ndarray, int]:
    """Parse ``n`` atom lines from ``start``; return symbols, positions and the next line index."""
    if start - 1 >= len(lines):
        raise ValueError("truncated file: missing comment line")
    symbols: list[str] = []
    pos = np.empty((n, 3), dtype=np.float64)
    for a in range(n):
        j = start + a
        if j >= len(lines):
            raise ValueError(f"truncated file: expected {n} atoms, found {a}")
        parts = lines[j].split()
        if len(parts) < 4:
            got = lines[j].strip()[:40]
            raise ValueError(f"wrong atom count: expected {n} atoms, line {j + 1} is {got!r}")
        try:
            pos[a] = [float(t.replace("*^", "e")) for t in parts[1:4]]
        except ValueError:
            raise ValueError(f"line {j + 1}: non-numeric coordinate in {lines[j].strip()[:60]!r}") from None
        symbols.append(_symbol(parts[0]))
    _check_positions(pos)
    end = start + n
    if end < len(lines) and lines[end].strip() and _parse_count(lines[end]) is None:
        raise ValueError(f"wrong atom count: line {end + 1} holds an extra atom after {n} atoms")
    return symbols, pos, end


def _next_header(lines: list[str], i: int) -> int:
    """Index of the next line at or after ``i`` that is a lone integer (a frame header)."""
    while i < len(lines) and _parse_count(lines[i]) is None:
        i += 1
    return i


def read_sdf(path: str | Path, strict: bool = True) -> list[Molecule]:
    """Read an SDF with RDKit (``sanitize=False``, ``removeHs=False``); keeps the 3D conformer and bonds.

    Numeric ``> <field>`` data become :attr:`Molecule.properties`. See :func:`read_molecules`
    for ``strict`` and the errors raised.
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    path = Path(path)
    text = "\n".join(_read_text(path))
    if text.strip() and "M  END" not in text:
        raise ValueError(f"{path}: not an SDF file (no 'M  END' line)")
    blocks = [b for b in re.split(r"^\$\$\$\$[ \t]*\n?", text, flags=re.M) if b.strip()]
    records: list[Molecule] = []
    with BlockLogs():  # restores the caller's RDKit log levels (EnableLog would switch on info/debug)
        for k, block in enumerate(blocks, start=1):
            name = block.split("\n", 1)[0].strip()
            try:
                records.append(_sdf_record(Chem, block, name))
            except ValueError as exc:
                if strict:
                    raise ValueError(f"{path}: record {k}: {exc}") from None
                records.append(Molecule(name=name, symbols=[], pos=np.zeros((0, 3)), error=str(exc)))
    return records


def _sdf_record(chem: Any, block: str, name: str) -> Molecule:
    if "M  END" not in block:
        raise ValueError("truncated record (no 'M  END' line)")
    mol = chem.MolFromMolBlock(block, sanitize=False, removeHs=False, strictParsing=True)
    if mol is None:
        raise ValueError(_molblock_problem(block) or "RDKit cannot parse the mol block (wrong atom count or "
                         "malformed line)")
    symbols = [_symbol(a.GetSymbol()) if a.GetAtomicNum() > 0 else _symbol("*") for a in mol.GetAtoms()]
    if mol.GetNumConformers() == 0:
        raise ValueError("no coordinates")
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64).reshape(-1, 3)
    _check_positions(pos)
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), float(b.GetBondTypeAsDouble())) for b in mol.GetBonds()]
    return Molecule(name=name, symbols=symbols, pos=pos, bonds=bonds, properties=_sdf_fields(block),
                          formal_charges=[a.GetFormalCharge() for a in mol.GetAtoms()])


def _molblock_problem(block: str) -> str | None:
    """Why RDKit refused a mol block, when it is an unknown element symbol (V2000 or V3000 atom lines)."""
    lines = block.split("\n")
    symbols: list[tuple[int, str]] = []
    if len(lines) > 3 and "V3000" not in lines[3]:
        try:
            n_atoms = int(lines[3][:3])
        except ValueError:
            return None
        for j in range(4, min(4 + n_atoms, len(lines))):
            symbols.append((j + 1, lines[j][31:34].strip()))
    else:
        in_atoms = False
        for j, line in enumerate(lines):
            if line.startswith("M  V30 BEGIN ATOM"):
                in_atoms = True
            elif line.startswith("M  V30 END ATOM"):
                break
            elif in_atoms and line.startswith("M  V30 ") and len(line.split()) > 3:
                symbols.append((j + 1, line.split()[3]))
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    known = {table.GetElementSymbol(z) for z in range(1, 119)} | {"*", "R", "R#", "A", "Q", "L", "LP", "D", "T"}
    for line_no, sym in symbols:
        if sym and sym not in known:
            return f"line {line_no}: unknown element symbol {sym!r}"
    return None


def _sdf_fields(block: str) -> dict[str, float]:
    """Numeric ``> <name>`` data fields after ``M  END`` (the first value line of each)."""
    props: dict[str, float] = {}
    tail = block.split("M  END", 1)[1].split("\n")
    for k, line in enumerate(tail[:-1]):
        m = _FIELD_RE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                val = float(tail[k + 1].strip())
                if math.isfinite(val):
                    props[m.group(1)] = val
    return props


# ============================================================================ writing
MoleculeLike = Molecule | tuple[Sequence[str], np.ndarray] | tuple[Sequence[str], np.ndarray, str]


def _as_triplet(mol: MoleculeLike, k: int) -> tuple[list[str], np.ndarray, str]:
    if isinstance(mol, Molecule):
        if mol.error is not None:
            raise ValueError(f"molecule {k}: cannot write a malformed record ({mol.error})")
        symbols, pos, name = mol.symbols, mol.pos, mol.name
    else:
        symbols, pos = mol[0], mol[1]
        name = str(mol[2]) if len(mol) > 2 else ""
    try:
        symbols = [_symbol(str(s)) for s in symbols]
    except ValueError as exc:
        raise ValueError(f"molecule {k}: {exc}") from None
    pos = np.asarray(pos, dtype=np.float64)
    if pos.shape != (len(symbols), 3):
        raise ValueError(f"molecule {k}: pos must have shape [{len(symbols)}, 3], got {list(pos.shape)}")
    _check_positions(pos)
    return symbols, pos, " ".join(name.split())


def _xyz_frame(symbols: list[str], pos: np.ndarray, name: str) -> str:
    atoms = "".join(f"{s:<2s} {x:16.10f} {y:16.10f} {z:16.10f}\n" for s, (x, y, z) in zip(symbols, pos, strict=True))
    return f"{len(symbols)}\n{name}\n{atoms}"


@contextlib.contextmanager
def molecule_writer(path: str | Path, fmt: str) -> Iterator[Callable[[Iterable[Any]], int]]:
    """Stream molecules to an XYZ or SDF file batch by batch, atomically.

    Yields a ``write(molecules) -> count`` function; call it once per batch, in order. The file
    appears, complete, when the block exits, and not at all if it raises (a bad molecule included).

    Args:
        path: output file.
        fmt: ``"xyz"`` (molecules as :class:`Molecule` or ``(symbols, pos[, name])`` tuples) or
            ``"sdf"`` (RDKit ``Mol`` objects with a conformer).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "two.xyz"
    >>> with molecule_writer(p, "xyz") as write:
    ...     write([(["H", "H"], [[0, 0, 0], [0.74, 0, 0]])])
    ...     write([(["O"], [[0, 0, 0]])])
    1
    1
    >>> len(read_xyz(p))
    2
    """
    if fmt not in ("xyz", "sdf"):
        raise ValueError(f"unknown molecule format {fmt!r}; allowed: xyz, sdf")
    with atomic_write(path) as fh:
        sink = _XyzSink(fh) if fmt == "xyz" else _SdfSink(fh)
        try:
            yield sink
        finally:
            sink.close()


class _XyzSink:
    """Appends validated XYZ frames to an open text file (see :func:`molecule_writer`)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh, self.written = fh, 0

    def __call__(self, molecules: Iterable[Any]) -> int:
        frames = [_as_triplet(m, self.written + k) for k, m in enumerate(molecules, start=1)]
        self.fh.write("".join(_xyz_frame(*frame) for frame in frames))
        self.written += len(frames)
        return len(frames)

    def close(self) -> None:
        """Nothing to release (the file belongs to the caller)."""


class _SdfSink:
    """Appends RDKit molecules to an open text file through one ``SDWriter`` (see :func:`molecule_writer`)."""

    def __init__(self, fh: IO[str]) -> None:
        from rdkit import Chem

        self.mol_type, self.writer, self.written = Chem.Mol, Chem.SDWriter(fh), 0

    def __call__(self, molecules: Iterable[Any]) -> int:
        from rdkit.rdBase import BlockLogs

        mols = list(molecules)
        for k, mol in enumerate(mols, start=self.written + 1):
            if not isinstance(mol, self.mol_type):
                raise ValueError(f"molecule {k}: expected an RDKit Mol, got {type(mol).__name__}")
        for k, mol in enumerate(mols, start=self.written + 1):
            if not (mol.HasProp("_Name") and mol.GetProp("_Name").strip()):
                mol.SetProp("_Name", sdf_title(mol, k))
            try:
                with BlockLogs():
                    self.writer.write(mol)
            except Exception:  # noqa: BLE001 - aromatic bonds outside a kekulisable ring: write them as type 4
                self.writer.SetKekulize(False)
                try:
                    self.writer.write(mol)
                finally:
                    self.writer.SetKekulize(True)
        self.written += len(mols)
        return len(mols)

    def close(self) -> None:
        """Flush the SDWriter (the file itself belongs to the caller)."""
        self.writer.close()


def sdf_title(mol: Any, index: int) -> str:
    """Title line for an untitled molecule: ``"<index> <SMILES>"`` or ``"<index> invalid (...)"``.

    The SMILES is RDKit's canonical SMILES of the whole molecule as bonded (fragments joined by
    ``.``); ``invalid`` means RDKit cannot sanitise it (e.g. a hypervalent atom). ``mol`` is not changed.

    >>> from rdkit import Chem
    >>> sdf_title(Chem.MolFromSmiles("CO", sanitize=False), 3)
    '3 CO'
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        copy = Chem.Mol(mol)
        try:
            Chem.SanitizeMol(copy)
            return f"{index} {Chem.MolToSmiles(Chem.RemoveHs(copy))}"
        except Exception as exc:  # noqa: BLE001 - RDKit raises several types; any failure means "invalid"
            reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
            return f"{index} invalid ({reason[:80]})"


def write_xyz(path: str | Path, molecules: Iterable[MoleculeLike]) -> None:
    """Write molecules as a multi-frame XYZ file, atomically.

    Args:
        path: output file.
        molecules: :class:`Molecule` records or ``(symbols, pos [n, 3])`` /
            ``(symbols, pos, name)`` tuples.

    Raises:
        ValueError: unknown element, bad shape or non-finite coordinate (nothing is written).
    """
    with molecule_writer(path, "xyz") as write:
        write(molecules)


def write_sdf(path: str | Path, mols: Iterable[Any]) -> None:
    """Write RDKit molecules (with a conformer) to an SDF file, atomically.

    Raises:
        ValueError: if an entry is not an RDKit ``Mol`` (nothing is written).
    """
    with molecule_writer(path, "sdf") as write:
        write(mols)


def bonded_mol(
    symbols: Sequence[str],
    pos: np.ndarray,
    bonds: Iterable[tuple[int, int, int]],
    formal_charges: Sequence[int] | None = None,
    name: str = "",
) -> Any:
    """An RDKit ``Mol`` with the GIVEN bonds and formal charges (nothing is inferred from coordinates).

    Args:
        symbols: ``n`` element symbols.
        pos: ``[n, 3]`` positions in Å (the conformer).
        bonds: ``(i, j, code)`` with 0-based atom indices and the bond-type codes of
            :data:`moldiff.constants.BOND_ORDERS` (1 single, 2 double, 3 triple, 4 aromatic).
        formal_charges: ``n`` formal charges (default: all 0).
        name: title line.

    Returns:
        The molecule, sanitised when RDKit accepts it (else as given), ready for :func:`write_sdf`.

    Raises:
        ValueError: unknown element, bad shape, atom index out of range or unknown bond code.
    """
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    # the codes of moldiff.constants.BOND_ORDERS
    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE, 4: Chem.BondType.AROMATIC}
    symbols, pos, name = _as_triplet((symbols, pos, name), 1)
    rw = Chem.RWMol()
    for k, sym in enumerate(symbols):
        atom = Chem.Atom(sym)
        if formal_charges is not None:
            atom.SetFormalCharge(int(formal_charges[k]))
        rw.AddAtom(atom)
    for i, j, code in bonds:
        i, j, code = int(i), int(j), int(code)
        if code not in kinds or not (0 <= i < len(symbols) and 0 <= j < len(symbols)) or i == j:
            raise ValueError(f"bad bond ({i}, {j}, {code}) for {len(symbols)} atoms (codes {sorted(kinds)})")
        rw.AddBond(i, j, kinds[code])
        if code == 4:
            rw.GetBondBetweenAtoms(i, j).SetIsAromatic(True)
            rw.GetAtomWithIdx(i).SetIsAromatic(True)
            rw.GetAtomWithIdx(j).SetIsAromatic(True)
    conf = Chem.Conformer(len(symbols))
    for k, (x, y, z) in enumerate(pos):
        conf.SetAtomPosition(k, Point3D(float(x), float(y), float(z)))
    mol = rw.GetMol()
    mol.AddConformer(conf, assignId=True)
    if name:
        mol.SetProp("_Name", name)
    from rdkit.rdBase import BlockLogs

    with BlockLogs():  # an invalid valence is expected of generated molecules: no RDKit log line per molecule
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001 - an unsanitisable molecule is still written as given
            mol.UpdatePropertyCache(strict=False)
    return mol
