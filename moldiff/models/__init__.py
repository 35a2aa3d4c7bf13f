"""Model families by name.

A checkpoint's ``config.model.kind`` names the family that built it; :func:`build_model` looks the
family up in :data:`MODEL_KINDS` and wires the network and the process from the config. Inference
(``moldiff.pipeline``) and training (``moldiff.training``) both build models only through here.

Adding a family: write one module here with a builder decorated ``@register_model("name")``,
import it below, and select it with ``model: {kind: name}`` in a config.
"""

from moldiff.models import egnn  # noqa: F401  (registers "egnn" and "eqattn")
from moldiff.models.registry import MODEL_KINDS, ModelSpec, build_model, register_model

__all__ = ["MODEL_KINDS", "ModelSpec", "build_model", "register_model"]
