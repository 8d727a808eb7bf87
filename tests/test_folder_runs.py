"""An image-folder run end to end, with a user's hierarchy file for Dist^C and Dist^S."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from kdgen.config import build_config
from kdgen.generations import train_generations

CLASSES = ("cat", "dog", "car", "bus")


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 3)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for image in range(count):
                pixels = rng.integers(0, 60, (30, 40, 3)) + 60 * index
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{image}.png")


def test_imagefolder_run_with_a_hierarchy_file(tmp_path: Path) -> None:
    _write_folder(tmp_path / "images")
    hierarchy = tmp_path / "tree.json"
    hierarchy.write_text(
        json.dumps({"cat": "animal", "dog": "animal", "car": "vehicle", "bus": "vehicle"})
    )
    config = build_config(
        "smoke",
        [
            "data.name=imagefolder",
            f"data.root={tmp_path / 'images'}",
            f"data.hierarchy={hierarchy}",
            "data.image_size=16",
            "data.workers=0",
            "data.val_size=8",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            "k=3",
            "schedule.epochs=2",
            "progress=false",
            "tensorboard=false",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    result = train_generations(config)
    summary = result.summary
    assert summary["num_classes"] == 4
    assert [g["generation"] for g in summary["generations"]] == [0, 1]
    for entry in summary["generations"]:
        assert 0 <= entry["test"]["top1"] <= 1
        assert 0 <= entry["test"]["dist_c"] <= 1
        assert 1 <= entry["test"]["dist_s"] <= 2
    classes = json.loads((result.path / "classes.json").read_text())
    assert classes["class_names"] == sorted(CLASSES)
    groups = dict(zip(classes["class_names"], classes["coarse_of_fine"], strict=True))
    assert groups["cat"] == groups["dog"] != groups["car"] == groups["bus"]
