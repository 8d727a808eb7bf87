"""The documents the code cites are in the repository, and say what the code relies on."""

from __future__ import annotations

import ast
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from kdgen import losses

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
DOC_PATH = re.compile(r"docs/[\w./-]*\w\.md")
# A section cited after a document, e.g. docs/method.md, "Teacher loss" or docs/method.md "X".
SECTION = re.compile(r"docs/method\.md,?\s+\"([^\"]+)\"")
# The README's name for the distribution of each third-party module the project imports.
DISTRIBUTION_OF_MODULE = {
    "torch": "PyTorch",
    "torchvision": "torchvision",
    "numpy": "NumPy",
    "omegaconf": "OmegaConf",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "scipy": "SciPy",
    "pytest": "pytest",
    "hypothesis": "hypothesis",
    "tensorboard": "TensorBoard",
    "sklearn": "scikit-learn",
    "timm": "timm",
    "safetensors": "safetensors",
    "submitit": "submitit",
    "PIL": "Pillow",
    "yaml": "PyYAML",
    "nltk": "NLTK",
    "huggingface_hub": "huggingface_hub",
    "mlflow": "MLflow",
    "wandb": "wandb",
}


def _citing_files() -> list[Path]:
    source = ROOT / "src"
    files = [*source.rglob("*.py"), *source.rglob("*.yaml"), ROOT / "README.md"]
    return sorted(f for f in files if f.is_file())


def _citations() -> list[tuple[Path, str]]:
    return [(f, m) for f in _citing_files() for m in DOC_PATH.findall(f.read_text())]


def _headings() -> set[str]:
    lines = METHOD.read_text().splitlines()
    return {line.lstrip("#").strip() for line in lines if line.startswith("#")}


def test_the_code_cites_the_method_document() -> None:
    cited = {path for _, path in _citations()}
    assert "docs/method.md" in cited


def test_every_cited_document_exists() -> None:
    missing = [
        f"{f.relative_to(ROOT)}: {path}" for f, path in _citations() if not (ROOT / path).is_file()
    ]
    assert missing == []


def test_every_cited_section_of_the_method_is_a_heading() -> None:
    headings = _headings()
    cited = {
        (f.relative_to(ROOT), " ".join(section.split()))
        for f in _citing_files()
        for section in SECTION.findall(f.read_text())
    }
    assert cited, 'expected section citations such as docs/method.md, "Teacher loss"'
    assert [c for c in cited if c[1] not in headings] == []


def test_no_citation_of_a_document_outside_the_repository() -> None:
    assert [str(f.relative_to(ROOT)) for f in _citing_files() if "METHOD.md" in f.read_text()] == []


def test_method_states_the_tolerance_threshold() -> None:
    text = "".join(METHOD.read_text().split())
    assert "eta>=K/(2K-1)" in text
    assert "5/9=0.556forK=5" in text


def _tsd_teacher_loss_moving_mass(eta: float, d: float, k: int = 5) -> float:
    """L_0 for one image whose top class gave mass d equally to the next K-1 (C = K)."""
    probs = torch.tensor([[1.0 - d] + [d / (k - 1)] * (k - 1)], dtype=torch.float64)
    loss = losses.teacher_loss(probs.log(), torch.tensor([0]), eta, "tsd", k)
    return float(loss)


@pytest.mark.parametrize(
    ("eta", "one_hot_is_optimal"), [(0.57, True), (0.6, True), (5 / 9, True), (0.54, False)]
)
def test_threshold_of_the_document_matches_the_loss(eta: float, one_hot_is_optimal: bool) -> None:
    # docs/method.md, "Tolerance threshold": one-hot is a local minimum iff eta >= 5/9 (K = 5);
    # at 5/9 the first-order terms cancel and CE's second-order term keeps it a minimum.
    gain = _tsd_teacher_loss_moving_mass(eta, 1e-3) - _tsd_teacher_loss_moving_mass(eta, 0.0)
    assert (gain > 0) == one_hot_is_optimal


def test_optimum_below_the_threshold_matches_the_document() -> None:
    # docs/method.md, "Tolerance threshold": a* = eta (K-1) / ((1-eta) K) = 0.8 for eta = 0.5.
    grid = [i / 1000 for i in range(200, 1000)]
    values = [_tsd_teacher_loss_moving_mass(0.5, 1.0 - a) for a in grid]
    best = grid[min(range(len(grid)), key=values.__getitem__)]
    assert math.isclose(best, 0.8, abs_tol=2e-3)


def _imported_top_level_modules() -> set[str]:
    modules = set()
    for folder in ("src", "tests", "benchmarks", "docs"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"kdgen", "tests"}


def _readme_dependency_paragraph() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("`make test` prints")
    return " ".join(text[start : text.index("## What the demo shows")].split())


def test_the_readme_names_every_third_party_import() -> None:
    imported = _imported_top_level_modules()
    assert imported <= set(DISTRIBUTION_OF_MODULE), imported - set(DISTRIBUTION_OF_MODULE)
    paragraph = _readme_dependency_paragraph()
    missing = [
        DISTRIBUTION_OF_MODULE[m] for m in imported if DISTRIBUTION_OF_MODULE[m] not in paragraph
    ]
    assert not missing


def _declared_requirements() -> list[str]:
    """The runtime and the dev requirements of pyproject.toml (no tomllib on Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    lists = re.findall(r"^(?:dependencies|dev) = \[(.*?)\]", text, flags=re.M | re.S)
    return [name for block in lists for name in re.findall(r'"([A-Za-z0-9_.-]+)', block)]


def test_the_readme_names_every_declared_dependency() -> None:
    names = _declared_requirements()
    assert {"torch", "scipy", "pytest", "submitit"} <= set(names)
    paragraph = _readme_dependency_paragraph().lower()
    readme_name = {"torch": "pytorch"}
    assert [n for n in names if readme_name.get(n, n).lower() not in paragraph] == []


def test_readme_says_how_to_call_the_kdgen_that_make_installs() -> None:
    venv = re.search(r"^VENV \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert venv is not None
    readme = (ROOT / "README.md").read_text()
    assert f"`{venv.group(1)}/bin/kdgen" in readme
    assert f"source {venv.group(1)}/bin/activate" in readme


def test_readme_says_the_demo_tables_last_digits_depend_on_the_cpu() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    demo = readme[readme.index("`make demo` needs no download") : readme.index("Test metrics")]
    assert "the last digits depend on the CPU" in demo
