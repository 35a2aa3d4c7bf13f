"""docs/configuration.md lists every config key of every section with its default (kept in sync by hand)."""

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from moldiff.config import DataConfig, DiffusionConfig, ModelConfig, TrainConfig

DOC = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()


def _section_keys(name: str) -> dict[str, str]:
    part = DOC.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z_0-9]+)` \| `([^`]*)` \|", part, flags=re.M))


@pytest.mark.parametrize("name, kind", [("data", DataConfig), ("model", ModelConfig),
                                        ("diffusion", DiffusionConfig), ("train", TrainConfig)])
def test_every_key_and_default_is_documented(name, kind):
    documented = _section_keys(name)
    for f in fields(kind):
        assert f.name in documented, f"docs/configuration.md: {name}.{f.name} is missing"
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        assert documented[f.name] == repr(default), f"{name}.{f.name}: documented {documented[f.name]}"
    assert set(documented) <= {f.name for f in fields(kind)}, "documented keys that do not exist"
