"""Weights on disk, and nothing but file I/O: atomic writes, safetensors paired with a JSON config,
``torch.load(weights_only=True)``, resumable training state and the hashes that bind artifacts to weights.

A model file ``X.safetensors`` has ``X.json`` next to it (:func:`save_paired`) with its config and how
it was made, so a loader rebuilds the model with no flags: :func:`fos.registry.load_checkpoint` for the
DiscoFOS models, ``load_paired`` with their own config class for the localizer and the inpainter.
This module builds no model: it imports neither the registry nor the models.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, BinaryIO, Callable

import torch

from fos.errors import WeightsError
from fos.config import ModelCfg, PreprocessCfg, to_dict




def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import, before any threads
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then rename: readers see
    the old file or the whole new one, and a failed write leaves the old file in place."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_torch_save(obj: Any, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def file_sha256(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_cpu(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def weights_sha256(model_or_path) -> str:
    """Identity of weights: the sha256 of a weights file, or of the safetensors bytes that
    :func:`save_checkpoint` would write for an in-memory model (equal to its file's sha256)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        return file_sha256(os.fspath(model_or_path))
    sha = getattr(model_or_path, "weights_sha256", "")
    if sha:
        return sha
    import hashlib

    from safetensors.torch import save

    return hashlib.sha256(save(state_dict_cpu(model_or_path))).hexdigest()


def sidecar(path: str) -> str:
    return os.path.splitext(path)[0] + ".json"


def save_paired(model, path: str, **info) -> None:
    """Write ``model``'s tensors to ``path`` (safetensors) and ``info`` to the JSON beside it, both atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, save(state_dict_cpu(model)))
    atomic_write_json(sidecar(path), info)


def save_checkpoint(model, path: str, preprocess: PreprocessCfg | None = None, **meta) -> None:
    """A DiscoFOS model: ``model_name``, ``model_cfg`` and ``preprocess_cfg`` in the JSON beside it."""
    save_paired(model, path, **{"model_name": getattr(model, "model_name", model.cfg.kind),
                                "model_cfg": to_dict(model.cfg), "preprocess_cfg": to_dict(preprocess or PreprocessCfg()),
                                **meta})


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch file (``weights_only=True``; never unpickles code)."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} not found")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"{path} could not be read as weights ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return obj


def clean_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^(module\.|_orig_mod\.)+", "", k)
        out[k.replace("._orig_mod.", ".")] = v
    return out


def load_state_dict_checked(model, sd: dict[str, torch.Tensor], source: str = "weights",
                            hint: str = "Check --model / the JSON config next to the weights.") -> None:
    """Strict load whose error names the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:2]})")
        name = getattr(model, "model_name", None) or getattr(getattr(model, "cfg", None), "kind", type(model).__name__)
        raise WeightsError(f"{source} do not fit model {name!r}: " + "; ".join(parts) + f". {hint}")
    model.load_state_dict(sd, strict=True)


def read_config(path: str, key: str = "model_cfg", cfg_cls=ModelCfg,
                missing_hint: str = "pass the model name explicitly",
                what: str = "a valid fos checkpoint config") -> dict[str, Any]:
    """The JSON config beside ``path``, with ``info[key]`` validated as a ``cfg_cls``."""
    side = sidecar(path)
    if not os.path.isfile(side):
        raise WeightsError(f"{path} has no config {side} next to it; {missing_hint}")
    try:
        with open(side, encoding="utf-8") as f:
            info = json.load(f)
        cfg_cls.from_dict(info[key])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{side} is not {what} ({type(e).__name__}: {e})") from e
    return info


def load_paired(path: str, key: str, cfg_cls, build: Callable[[Any], Any], missing: str, what: str):
    """The model saved by :func:`save_paired` at ``path``: its config ``info[key]`` read as a ``cfg_cls``,
    the model made by ``build(cfg)`` and the tensors loaded strictly (a file that does not fit gets a
    message naming the keys). ``missing``: what to do when the file is not there. Sets
    ``weights_sha256`` and ``checkpoint_info``; returns the model in eval mode. The localizer's and the
    inpainter's loader."""
    if not os.path.isfile(path):
        raise WeightsError(f"{what} weights {path} not found; {missing}")
    info = read_config(path, key, cfg_cls, missing, f"a {what} config")
    model = build(cfg_cls.from_dict(info[key]))
    load_state_dict_checked(model, clean_keys(read_state_dict(path)), source=f"{path} does not fit its config "
                            f"{sidecar(path)}: its weights", hint="Retrain it or restore the pair.")
    model.weights_sha256 = file_sha256(path)
    model.checkpoint_info = info
    return model.eval()


# --------------------------------------------------------------------------- exported artifacts
def stale_source(recorded_sha256: str | None, current_sha256: str, artifact: str, weights: str) -> str:
    """Why ``artifact``, which records the sha256 of the weights it was made from, cannot serve the weights
    ``weights`` (sha256 ``current_sha256``); "" when it can. The one staleness check of exported graphs."""
    if not recorded_sha256:
        return f"{artifact} does not record which weights it was exported from"
    if recorded_sha256 != current_sha256:
        return f"{artifact} was exported from other weights than {weights}"
    return ""


def side_graph(weights: str, name: str) -> str:
    """Where the exported graph ``name`` of a model file lives: ``<its folder>/onnx/<name>.onnx`` (the
    inpainter's and the referring segmenter's; the teacher's and the student's are :mod:`fos.runtime`'s;
    the backend that serves it, :func:`fos.runtime.graphs.open_graph`)."""
    return os.path.join(os.path.dirname(os.path.abspath(weights)), "onnx", f"{name}.onnx")


def graph_problem(graph: str, weights: str) -> str | None:
    """None when the exported ``graph`` exists with a sidecar that records ``weights`` as its source, else
    why it cannot serve them: the inpainter's and the referring segmenter's check."""
    if not os.path.isfile(graph) or not os.path.isfile(sidecar(graph)):
        return f"no exported graph at {graph}"
    try:
        with open(sidecar(graph), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        return f"{sidecar(graph)} is unreadable ({e})"
    return stale_source(meta.get("source_sha256"), file_sha256(weights), graph, weights) or None


# --------------------------------------------------------------------------- resumable training
def save_resumable(path: str, key: dict, stateful: dict, **state) -> None:
    """``<run>/last.pt``: the ``state_dict()`` of each object of ``stateful`` (model, optimizer, ...), the
    run's ``key`` (its config: what a resumed run must share) and plain values, written atomically."""
    atomic_torch_save({"key": key, **{k: v.state_dict() for k, v in stateful.items()}, **state}, path)


def resume(path: str, key: dict, stateful: dict, restart: bool = False) -> dict:
    """Load :func:`save_resumable`'s checkpoint into the objects of ``stateful`` and return its other
    values; ``{}`` when there is none or ``restart``. One saved with another ``key`` is an error that
    says how to start over. The one resume of ``fos.train``, ``fos.localize.train`` and ``fos.inpaint.train``."""
    if restart or not os.path.exists(path):
        return {}
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path} could not be read ({type(e).__name__}: {e}); pass --restart to start over") from e
    if not isinstance(st, dict) or st.get("key") != key:
        raise WeightsError(f"{path} was made with other settings; pass --restart to start over, or use another --out")
    for k, obj in stateful.items():
        obj.load_state_dict(st[k])
    return {k: v for k, v in st.items() if k != "key" and k not in stateful}
