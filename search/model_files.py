"""Pruned models in a run folder: what is written, and the only way the product reads one back.

Each model is written twice: `model.pt`, the whole pruned nn.Module (torch.save, for users who trust the folder;
the product never unpickles it), and its weights file beside it, which holds only tensors (masked weights packed
as their nonzeros and a bitmask, so a masked model's file weighs what it ships at), the integer shape attributes of
every module and the names of modules replaced by nn.Identity. The product rebuilds a model from the weights file on
a copy of the dense model, loaded with `weights_only=True`, from a path confined to the run folder.
A dynamic model (early exits) is its backbone, saved so, and an exits file beside it (the exit points, each head's
width, the thresholds and the heads' tensors), read back the same safe way. An int8 model is its float model, saved
so, and an int8 file beside it (the quantised graph's tensors: int8 weights, scales, zero points, and the input
shape it was traced with), rebuilt by search.quantize.quantized_like.
"""
from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynamic import EarlyExitModel, exit_head
from dynamic.exits import head_channels
from reports.atomic import write_bytes
from reports.run_files import ReportError, confined_path, exits_path, int8_path, weights_path
from search.packed import pack_state, unpack_state
from search.quantize import Int8Model, quantized_like

FORMAT = "prune-search-weights/2"  # /2: masked weights packed as nonzeros + bitmask (search.packed)
READABLE_FORMATS = ("prune-search-weights/1", FORMAT)
EXITS_FORMAT = "prune-search-exits/2"  # /2: the heads' layout saved (dynamic.exits.exit_head: pool first, or linear)
EXITS_FORMATS_LAYOUTS = {"prune-search-exits/1": "conv-pool"}  # what an older exits file's heads were
INT8_FORMAT = "prune-search-int8/1"
# The module attributes that hold a pruned shape; torch-pruning updates these when it removes channels or heads.
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
               "num_channels", "num_groups", "normalized_shape", "embed_dim", "num_heads", "kdim", "vdim", "head_dim")


class ModelFileError(ReportError):
    """A saved model cannot be read back safely: outside the run folder, another format, or another architecture."""


def save_pruned(model: nn.Module, path: Path, input_shape: tuple[int, ...] | None = None) -> None:
    """Write `model` as the whole module at `path` and as its weights file beside it (a dynamic model: its backbone's,
    and its exits file; an int8 model: its float model's, and its int8 file, which needs the `input_shape` it was
    traced with), each atomically."""
    write_bytes(path, _saved_bytes(model))
    backbone = model.backbone if isinstance(model, EarlyExitModel) else model
    backbone = backbone.float_model if isinstance(backbone, Int8Model) else backbone
    write_bytes(weights_path(path), _saved_bytes(weights_of(backbone)))
    for kind, extra in ((EarlyExitModel, exits_path(path)), (Int8Model, int8_path(path))):
        if not isinstance(model, kind):
            extra.unlink(missing_ok=True)
    if isinstance(model, EarlyExitModel):
        write_bytes(exits_path(path), _saved_bytes(exits_of(model)))
    if isinstance(model, Int8Model):
        if input_shape is None:
            raise ValueError("saving an int8 model needs the input_shape it was traced with")
        write_bytes(int8_path(path), _saved_bytes({"format": INT8_FORMAT, "input_shape": list(input_shape),
                                                   "state_dict": model.quantized.state_dict()}))


def exits_of(model: EarlyExitModel) -> dict[str, Any]:
    """What rebuilds a dynamic model's heads on its backbone: exit points, head widths, classes, thresholds, tensors."""
    last = [[m for m in head.modules() if isinstance(m, nn.Linear)][-1] for head in model.heads]
    return {"format": EXITS_FORMAT, "exits": list(model.exits), "channels": [head_channels(h) for h in model.heads],
            "layout": model.head_layout,
            "classes": last[0].out_features, "thresholds": model.thresholds.tolist(),
            "state_dict": {key: value.detach().cpu() for key, value in model.heads.state_dict().items()}}


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
            "state_dict": pack_state({key: value.detach().cpu() for key, value in model.state_dict().items()})}


def load_pruned(run_dir: Path, model_path: str, dense: nn.Module) -> nn.Module:
    """Rebuild the model saved at `model_path` (relative to `run_dir`) from its weights file and the `dense` model,
    which stays untouched; ModelFileError if the path leaves the folder or the file does not fit `dense`."""
    path = confined_path(run_dir, str(weights_path(model_path)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    backbone = rebuild(dense, _read(path, *READABLE_FORMATS))
    exits = confined_path(run_dir, str(exits_path(model_path)))
    if exits.is_file():
        return with_exits(backbone, _read(exits, EXITS_FORMAT, *EXITS_FORMATS_LAYOUTS))
    int8 = confined_path(run_dir, str(int8_path(model_path)))
    return with_int8(backbone, _read(int8, INT8_FORMAT)) if int8.is_file() else backbone


def with_int8(model: nn.Module, saved: dict[str, Any]) -> Int8Model:
    """The float `model` quantised as an int8 file (save_pruned's) says; ModelFileError where it does not fit."""
    try:
        example = torch.zeros([int(size) for size in saved["input_shape"]])
        return quantized_like(model, example, saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"the int8 file does not fit the model: {str(error).splitlines()[0]}") from None


def with_exits(backbone: nn.Module, saved: dict[str, Any]) -> EarlyExitModel:
    """`backbone` with the heads of an exits file (exits_of's dict); ModelFileError where they do not fit it."""
    try:
        layout = EXITS_FORMATS_LAYOUTS.get(saved["format"]) or str(saved["layout"])
        heads = [exit_head(int(c), int(saved["classes"]), layout) for c in saved["channels"]]
        model = EarlyExitModel(backbone, list(saved["exits"]), heads, [float(t) for t in saved["thresholds"]],
                               head_layout=layout)
        model.heads.load_state_dict(saved["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"the exits file does not fit the model: {str(error).splitlines()[0]}") from None
    return model.eval()


def _read(path: Path, *formats: str) -> dict[str, Any]:
    """A file of one of this tool's `formats`, loaded with weights_only=True; ModelFileError otherwise."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a file that is not ours, whatever torch says about it
        raise ModelFileError(f"{path} is not a weights file of this tool ({type(error).__name__}: {error})") from None
    if not isinstance(saved, dict) or saved.get("format") not in formats:
        raise ModelFileError(f"{path} is not a weights file of this tool (format {' or '.join(formats)} expected)")
    return saved


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
    state = unpack_state(saved["state_dict"])
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
