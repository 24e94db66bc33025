"""What pyproject.toml declares: torch and torchvision with lower bounds only (an upper cap made pip downgrade a
newer torch, and swap its CUDA build, when pfanet was installed next to it), the versions CI installs inside that
range and named in the README, the optional extras, and every package of the source tree."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement

from tests.helpers import REPO

tomllib = pytest.importorskip("tomllib")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def requirements() -> dict[str, Requirement]:
    return {req.name: req for req in map(Requirement, PROJECT["project"]["dependencies"])}


def ci_versions() -> dict[str, str]:
    """The torch and torchvision versions the Makefile installs (what `make test`, hence CI, runs)."""
    line = next(line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("TORCH_PACKAGES"))
    return dict(re.findall(r"(torch|torchvision)==([\w.+]+)", line))


@pytest.mark.parametrize("name,too_old,newer", [("torch", "1.13", "9.0"), ("torchvision", "0.14", "9.0")])
def test_torch_has_a_lower_bound_and_no_upper_bound(name, too_old, newer):
    specifier = requirements()[name].specifier
    assert specifier and all(spec.operator == ">=" for spec in specifier), specifier
    assert specifier.contains(ci_versions()[name]) and specifier.contains(newer)
    assert not specifier.contains(too_old)


def test_the_readme_says_which_versions_ci_ran():
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    versions = ci_versions()
    assert f"CI runs torch {versions['torch']} and torchvision {versions['torchvision']}" in readme


def test_optional_extras_and_packages():
    extras = PROJECT["project"]["optional-dependencies"]
    assert {Requirement(r).name for r in extras["export"]} == {"onnx", "onnxscript", "onnxruntime"}
    assert {Requirement(r).name for r in extras["search"]} == {"faiss-cpu"}
    declared = set(PROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "pfanet_cli").rglob("__init__.py")}
    assert found <= declared, found - declared
