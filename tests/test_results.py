"""The committed studies (docs/results/): every run's summary.json has its config.yaml
beside it, and that config is the one the summary's config hash was made from."""

from __future__ import annotations

from pathlib import Path

import yaml

from kdgen.policy import patriarch_mismatch
from kdgen.precision import Numerics
from kdgen.provenance import run_digest
from kdgen.runs import RunFolder

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _runs() -> list[RunFolder]:
    return [RunFolder(path.parent) for path in sorted(RESULTS.rglob("summary.json"))]


def _unrecorded(folder: RunFolder) -> bool:
    """Whether the run loaded its patriarch before kdgen recorded it (no run.json record):
    its hash was made with the patriarch's path on the study's machine."""
    patriarch = yaml.safe_load(folder.config_path.read_text()).get("patriarch")
    return bool(patriarch) and not isinstance(folder.read_state().get("patriarch"), dict)


def _numerics(folder: RunFolder) -> Numerics:
    numerics = Numerics.from_record(folder.read_summary() or {})
    assert numerics is not None, folder.path
    return numerics


def test_every_committed_run_has_its_config() -> None:
    runs = _runs()
    assert runs and [f.path for f in runs if not f.config_path.is_file()] == []
    # The D(1.0,0.6) runs of both Fashion-MNIST studies predate the patriarch record.
    assert len([f for f in runs if _unrecorded(f)]) == 12


def test_the_configs_of_seed_0_hash_to_their_summaries() -> None:
    """Seed 0 of every process (reading a config takes a while). A run without the
    patriarch record names a committed run of the same study whose patriarch it could
    load (no mismatch) and has that run's generation 0."""
    for folder in (f for f in _runs() if f.path.name == "seed0"):
        config, summary = folder.read_config(), folder.read_summary() or {}
        if not _unrecorded(folder):
            assert run_digest(config, folder.read_state()) == summary["config_hash"], folder.path
            continue
        source = Path(config.patriarch or "")
        owner = RunFolder(folder.path.parent.parent / source.parent.name / source.name)
        mismatch = patriarch_mismatch(
            owner.read_config(), _numerics(owner), config, _numerics(folder)
        )
        assert mismatch == "", folder.path
        theirs = owner.read_summary() or {}
        assert theirs["generations"][0]["test"] == summary["generations"][0]["test"]
