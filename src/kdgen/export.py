"""``kdgen export``: each generation's weights as safetensors, with the metadata needed to
rebuild the model (``create_model(model, num_classes, in_channels, **model_args)``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kdgen.errors import KdgenError
from kdgen.files import make_folder
from kdgen.runs import RunFolder, atomic_write_bytes, load_checkpoint


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise KdgenError(
            "kdgen export needs safetensors; install it with: pip install 'kdgen[export]'"
        ) from None
    return safetensors.torch


def _metadata(payload: dict[str, Any], classes: list[str] | None) -> dict[str, str]:
    """safetensors metadata: strings only."""
    return {
        "format": "pt",
        "model": str(payload["model_name"]),
        "model_args": json.dumps(payload.get("model_args", {})),
        "num_classes": str(payload["num_classes"]),
        "in_channels": str(payload["in_channels"]),
        "generation": str(payload["generation"]),
        "stage": str(payload.get("stage", "generation")),
        "config_hash": str(payload.get("config_hash")),
        "classes": json.dumps(classes),
    }


def export_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write ``gen{g}.safetensors`` for every finished generation of a run into ``out``
    (default ``RUN_DIR/export``); returns the paths written."""
    save = _safetensors().save
    folder = RunFolder(run_dir)
    generations = folder.require_generations()
    classes_path = folder.path / "classes.json"
    classes = json.loads(classes_path.read_text())["class_names"] if classes_path.exists() else None
    out_dir = make_folder(Path(out) if out is not None else folder.path / "export")
    written = []
    for generation in generations:
        payload = load_checkpoint(folder.generation_checkpoint(generation))
        # safetensors refuses shared or strided storage: give each tensor its own copy.
        tensors = {k: v.detach().contiguous().clone() for k, v in payload["model"].items()}
        path = out_dir / f"gen{generation}.safetensors"
        atomic_write_bytes(path, save(tensors, metadata=_metadata(payload, classes)))
        written.append(path)
    return written


def load_exported(path: str | Path) -> tuple[torch.nn.Module, dict[str, str]]:
    """A model rebuilt from an exported file with :func:`kdgen.models.create_model`, and
    the file's metadata."""
    from safetensors import safe_open

    from kdgen.models import create_model

    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    state = _safetensors().load_file(str(path))
    model = create_model(
        metadata["model"],
        int(metadata["num_classes"]),
        int(metadata["in_channels"]),
        **json.loads(metadata.get("model_args", "{}")),
    )
    model.load_state_dict(state)
    return model.eval(), metadata
