"""Pruned models in a run folder: what is written, and the only way the product reads one back.

Each model is written twice: `model.pt`, the whole pruned nn.Module (torch.save, for users who trust the folder;
the product never unpickles it), and its weights file beside it, which holds only tensors, the integer shape
attributes of every module and the names of modules replaced by nn.Identity. The product rebuilds a model from the
weights file on a copy of the dense model, loaded with `weights_only=True`, from a path confined to the run folder.
"""
from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reports.atomic import write_bytes
from reports.run_files import ReportError, confined_path, weights_path

FORMAT = "prune-search-weights/1"
# The module attributes that hold a pruned shape; torch-pruning updates these when it removes channels or heads.
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
               "num_channels", "num_groups", "normalized_shape", "embed_dim", "num_heads", "kdim", "vdim", "head_dim")


class ModelFileError(ReportError):
    """A saved model cannot be read back safely: outside the run folder, another format, or another architecture."""


def save_pruned(model: nn.Module, path: Path) -> None:
    """Write `model` as the whole module at `path` and as its weights file beside it, each atomically."""
    write_bytes(path, _saved_bytes(model))
    write_bytes(weights_path(path), _saved_bytes(weights_of(model)))


def weights_of(model: nn.Module) -> dict[str, Any]:
    """What rebuilds `model` from the dense one: tensors, shape attributes, modules replaced by nn.Identity."""
    attributes = {}
    for name, module in model.named_modules():
        shapes = {attr: getattr(module, attr) for attr in SHAPE_ATTRS if _is_shape(getattr(module, attr, None))}
        if shapes:
            attributes[name] = shapes
    identity = [name for name, module in model.named_modules() if name and isinstance(module, nn.Identity)]
    classes = {name: type(module).__name__ for name, module in model.named_modules()}
    return {"format": FORMAT, "attributes": attributes, "identity": identity, "classes": classes,
            "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()}}


def load_pruned(run_dir: Path, model_path: str, dense: nn.Module) -> nn.Module:
    """Rebuild the model saved at `model_path` (relative to `run_dir`) from its weights file and the `dense` model,
    which stays untouched; ModelFileError if the path leaves the folder or the file does not fit `dense`."""
    path = confined_path(run_dir, str(weights_path(model_path)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a weights file that is not ours, whatever torch says about it
        raise ModelFileError(f"{path} is not a weights file of this tool ({type(error).__name__}: {error})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a weights file of this tool (format {FORMAT} expected)")
    return rebuild(dense, saved)


def rebuild(dense: nn.Module, saved: dict[str, Any]) -> nn.Module:
    """A copy of `dense` given the saved shapes, identities and tensors (weights_of's dict); ModelFileError where
    they are not a pruning of `dense`: other module types, or a tensor larger than dense's in any dimension."""
    model = copy.deepcopy(dense).cpu()
    for name in saved["identity"]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    modules = dict(model.named_modules())
    kinds = {name: type(module).__name__ for name, module in modules.items()}
    if kinds != saved["classes"]:
        other = sorted(set(kinds.items()) ^ set(saved["classes"].items()))[0]
        raise ModelFileError(f"the weights do not fit the dense model: module {other[0] or '(root)'!r} differs")
    dense_state = model.state_dict()
    for name, shapes in saved["attributes"].items():
        if name in modules:
            for attr, value in shapes.items():
                setattr(modules[name], attr, value)
    state = saved["state_dict"]
    for key, tensor in state.items():
        reference = dense_state.get(key)
        if reference is None or reference.dim() != tensor.dim() or any(
                size > limit for size, limit in zip(tensor.shape, reference.shape)):
            raise ModelFileError(f"the weights do not fit the dense model: {key} has shape {list(tensor.shape)}, "
                                 f"dense {None if reference is None else list(reference.shape)}")
        owner, _, leaf = key.rpartition(".")
        module = modules[owner]
        if leaf in module._parameters:  # noqa: SLF001 - resizing a parameter in place has no public API
            module._parameters[leaf] = nn.Parameter(tensor.clone())  # noqa: SLF001
        elif leaf in module._buffers:  # noqa: SLF001
            module._buffers[leaf] = tensor.clone()  # noqa: SLF001
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(f"the weights do not fit the dense model: {str(error).splitlines()[0]}") from None
    return model.eval()


def _is_shape(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _saved_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
