"""moldiff: E(3)-equivariant diffusion models for 3D molecule generation (EDM protocol).

Public API::

    import moldiff
    model = moldiff.load_model("qm9")                 # shipped checkpoint, no dataset needed
    mols = model.sample(10, steps=100, seed=0)        # RDKit molecules with 3D coordinates
"""

__version__ = "0.1.0"

_LAZY = {
    "EGNNDenoiser": "moldiff.nn.denoiser",
    "EquivariantDiffusion": "moldiff.diffusion.process",
    "NoiseSchedule": "moldiff.diffusion.schedules",
    "Sampler": "moldiff.sampling.sampler",
    "NodeCountDistribution": "moldiff.sampling.priors",
    "MolBatch": "moldiff.types",
    "Molecule": "moldiff.io",
    "SamplingConfig": "moldiff.sampling.config",
    "ExperimentConfig": "moldiff.config",
    "MolDiff": "moldiff.pipeline",
    "load_model": "moldiff.pipeline",
    "build_process": "moldiff.pipeline",
    "build_model": "moldiff.models",
    "register_model": "moldiff.models",
    "shipped_models": "moldiff.pipeline",
    "evaluate_molecules": "moldiff.evaluation.report",
    "inpaint_molecules": "moldiff.fragments",
    "relax_molecules": "moldiff.relax",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):  # PEP 562: keep `import moldiff` cheap (no torch/RDKit until used)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moldiff' has no attribute {name!r}")
