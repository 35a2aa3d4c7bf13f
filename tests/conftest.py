"""Shared pytest fixtures for the moldiff test suite.

Sections (add new fixtures to the matching section, or start a new one at the end):

1. Seeds and threads: every test starts from the same RNG state; torch runs one intra-op thread
   (tiny models are 10-50x *slower* with 2 threads on a loaded 2-core CI box; override with
   ``MOLDIFF_TEST_THREADS=n``).
2. Precision and devices: ``float64`` (default dtype switched for the test), ``dtype`` and ``device``
   parametrized fixtures (cuda is marked ``gpu`` and skipped when absent).
3. Tiny synthetic molecules: :func:`make_mol_batch` (exposed as the ``make_batch`` fixture) builds a
   sparse :class:`moldiff.types.MolBatch` with QM9-like atom types; ``mol_batch`` is a ready one;
   ``make_bond_batch`` (:func:`make_bond_chain_batch`) adds a chain of bonds for bond-channel models.
4. Tiny models: ``make_denoiser`` / ``make_process`` factories (hidden 16, 1 layer by default) so
   that tests stay fast on a 2-core CPU.

Fixture *files* (data read by tests) live in ``tests/fixtures/``: ``small_mols.{sdf,xyz}`` (three small
molecules: io and dataset import), ``expected.npz`` (golden regression, ``test_regression.py``),
``golden_qm9.xyz`` (QM9 molecules with their expected metrics, ``tests/evaluation``). They moved there
from ``tests/data/`` and ``tests/evaluation/``; ``tests/data/`` holds the tests of ``moldiff.data`` (a
test folder, not data). Put new data files in ``tests/fixtures/`` and point at them with
``Path(__file__).resolve().parents[k] / "fixtures"``.

Test files import nothing from this module; they request fixtures by name.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import torch

from moldiff.diffusion.process import EquivariantDiffusion
from moldiff.diffusion.schedules import NoiseSchedule
from moldiff.geometry import remove_mean
from moldiff.nn.denoiser import EGNNDenoiser
from moldiff.types import MolBatch

# ============================================================================ 1. seeds / threads
SEED = 0
torch.set_num_threads(int(os.environ.get("MOLDIFF_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Reset Python, NumPy and torch RNGs before every test."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


# ============================================================================ 2. precision / devices
CUDA_AVAILABLE = torch.cuda.is_available()

#: Dtypes every dtype-parametrized test runs in.
DTYPES = (torch.float32, torch.float64)
#: Devices every device-parametrized test runs on (cuda: ``gpu`` marker, skipped when absent).
DEVICES = (
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA_AVAILABLE, reason="CUDA not available")]
    ),
)


@pytest.fixture
def float64() -> Iterator[torch.dtype]:
    """Run the test with ``torch.float64`` as default dtype (equivariance tests); restores afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """Parametrized over :data:`DTYPES`."""
    return request.param


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Parametrized over :data:`DEVICES`."""
    return torch.device(request.param)


# ============================================================================ 3. tiny molecules
#: Atomic numbers of the QM9 vocabulary in EDM's one-hot order (H, C, N, O, F).
QM9_Z = (1, 6, 7, 8, 9)
NUM_CLASSES = len(QM9_Z)
#: Width of ``h`` for a model with charges: one-hot + atomic-number channel.
FEATURE_DIM = NUM_CLASSES + 1


def make_mol_batch(
    num_atoms: Sequence[int] = (3, 4, 5),
    *,
    context_nf: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    center: bool = False,
    scale: float = 1.5,
) -> MolBatch:
    """A sparse batch of random QM9-like molecules (deterministic given ``seed``).

    Args:
        num_atoms: atom count of each molecule (``B = len(num_atoms)``).
        context_nf: width of a random per-molecule context (0: no context).
        dtype: dtype of positions, one-hot, charges and context.
        device: where the tensors live.
        seed: RNG seed (a private generator: the global RNG is untouched).
        center: remove each molecule's centre of mass.
        scale: standard deviation of the positions (Å).
    """
    gen = torch.Generator().manual_seed(seed)
    counts = torch.as_tensor(list(num_atoms), dtype=torch.long)
    batch = torch.repeat_interleave(torch.arange(len(counts)), counts)
    n = int(counts.sum())
    pos = scale * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    if center:
        mean = torch.zeros(len(counts), 3, dtype=torch.float64).index_add_(0, batch, pos) / counts[:, None]
        pos = pos - mean[batch]
    types = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    one_hot = torch.nn.functional.one_hot(types, NUM_CLASSES).to(torch.float64)
    charges = torch.tensor(QM9_Z, dtype=torch.float64)[types].unsqueeze(1)
    context = torch.randn(len(counts), context_nf, generator=gen, dtype=torch.float64) if context_nf else None
    mol = MolBatch(
        pos=pos.to(dtype),
        one_hot=one_hot.to(dtype),
        atomic_numbers=charges.to(dtype),
        batch=batch,
        num_graphs=len(counts),
        context=None if context is None else context.to(dtype),
    )
    return mol.to(device)


@pytest.fixture
def make_batch() -> Callable[..., MolBatch]:
    """Factory fixture: :func:`make_mol_batch`."""
    return make_mol_batch


def make_bond_chain_batch(sizes: Sequence[int] = (4, 3, 5), *, num_classes: int = 4, seed: int = 0) -> MolBatch:
    """Random zero-CoM molecules whose bonds form a chain 0-1-2-... (single, then double, alternating).

    For models with a categorical bond channel (``MolBatch.bond_index`` / ``bond_type``); types are
    uniform over ``num_classes``, there is no charge channel, and positions have std 1.5 Å.
    """
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor(list(sizes))
    batch = torch.repeat_interleave(torch.arange(len(sizes)), counts)
    n = int(counts.sum())
    pos = remove_mean(1.5 * torch.randn(n, 3, generator=gen), batch, len(sizes))
    one_hot = torch.nn.functional.one_hot(torch.randint(0, num_classes, (n,), generator=gen), num_classes).float()
    first = (torch.cumsum(counts, 0) - counts).tolist()
    idx, codes = [], []
    for f, m in zip(first, sizes, strict=True):
        for i in range(m - 1):
            idx.append((f + i, f + i + 1))
            codes.append(1 + i % 2)
    return MolBatch(pos=pos, one_hot=one_hot, atomic_numbers=torch.zeros(n, 0), batch=batch, num_graphs=len(sizes),
                    bond_index=torch.tensor(idx).t(), bond_type=torch.tensor(codes))


@pytest.fixture
def make_bond_batch() -> Callable[..., MolBatch]:
    """Factory fixture: :func:`make_bond_chain_batch`."""
    return make_bond_chain_batch


@pytest.fixture
def mol_batch() -> MolBatch:
    """Three molecules of 3, 4 and 5 atoms, float32, no context."""
    return make_mol_batch((3, 4, 5))


# ============================================================================ 4. tiny models
def make_tiny_denoiser(
    *,
    context_nf: int = 0,
    hidden_nf: int = 16,
    n_layers: int = 1,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **kwargs,
) -> EGNNDenoiser:
    """A small :class:`EGNNDenoiser` over :data:`FEATURE_DIM` features, seeded initialisation."""
    torch.manual_seed(seed)
    net = EGNNDenoiser(FEATURE_DIM, context_nf=context_nf, hidden_nf=hidden_nf, n_layers=n_layers, **kwargs)
    return net.to(dtype)


def make_tiny_process(
    *,
    schedule: str = "polynomial_2",
    timesteps: int = 1000,
    loss_type: str = "l2",
    dtype: torch.dtype = torch.float32,
    **denoiser_kwargs,
) -> EquivariantDiffusion:
    """A tiny :class:`EquivariantDiffusion` with EDM's QM9 normalisation ``(1, 4, 10)`` and charges."""
    net = make_tiny_denoiser(dtype=dtype, **denoiser_kwargs)
    proc = EquivariantDiffusion(
        net, NoiseSchedule(schedule, timesteps), NUM_CLASSES, include_charges=True, loss_type=loss_type
    )
    return proc.to(dtype)


@pytest.fixture
def make_denoiser() -> Callable[..., EGNNDenoiser]:
    """Factory fixture: :func:`make_tiny_denoiser`."""
    return make_tiny_denoiser


def fit_to_batch(proc: EquivariantDiffusion, mol: MolBatch, steps: int, lr: float = 3e-3,
                 seed: int = 0) -> EquivariantDiffusion:
    """``steps`` Adam steps of the training loss on one fixed batch (the tiny overfit tests); returns ``proc``."""
    opt = torch.optim.Adam(proc.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    proc.train()
    for _ in range(steps):
        opt.zero_grad()
        proc.loss(mol, generator=gen).loss.mean().backward()
        opt.step()
    return proc


@pytest.fixture
def fit_batch() -> Callable[..., EquivariantDiffusion]:
    """Factory fixture: :func:`fit_to_batch`."""
    return fit_to_batch


@pytest.fixture
def make_process() -> Callable[..., EquivariantDiffusion]:
    """Factory fixture: :func:`make_tiny_process`."""
    return make_tiny_process


def _spawn_ranks(target: Callable, world: int, *args) -> dict:
    """Run ``target(rank, world, *args, queue)`` in ``world`` spawned processes; each puts ``(rank, result)``.

    Returns ``{rank: result}`` after checking that every process exited with code 0.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


@pytest.fixture
def spawn_ranks() -> Callable[..., dict]:
    """``spawn_ranks(target, world, *args)``: a multi-process (e.g. gloo) test run; see :func:`_spawn_ranks`."""
    return _spawn_ranks


# ============================================================================ the tiny training run
TINY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "configs",
                           "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One seconds-long ``moldiff train`` of ``benchmarks/configs/tiny.yaml``, shared by the CLI, hardening
    and fuzz tests. Treat it as read-only: copy the directory (``shutil.copytree``) before changing it."""
    from moldiff.cli import main

    run = tmp_path_factory.mktemp("tiny_run")
    assert main(["train", "--config", TINY_CONFIG, "--out", str(run)]) == 0
    return run

