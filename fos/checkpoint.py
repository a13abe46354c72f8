"""Save and load weights safely: safetensors (+ a JSON config beside it) or ``torch.load(weights_only=True)``.

A checkpoint ``X.safetensors`` has ``X.json`` next to it with ``model_name``, ``model_cfg``,
``preprocess_cfg`` and how it was made, so :func:`load_checkpoint` rebuilds the model with no flags.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, BinaryIO, Callable

import torch

from fos.config import ModelCfg, PreprocessCfg, to_dict


class WeightsError(ValueError):
    """Weights that cannot be read or do not fit the model."""


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


def save_checkpoint(model, path: str, preprocess: PreprocessCfg | None = None, **meta) -> None:
    """Write ``path`` (safetensors) and its JSON config atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, save(state_dict_cpu(model)))
    info = {"model_name": getattr(model, "model_name", model.cfg.kind), "model_cfg": to_dict(model.cfg),
            "preprocess_cfg": to_dict(preprocess or PreprocessCfg()), **meta}
    atomic_write_json(sidecar(path), info)


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


def load_state_dict_checked(model, sd: dict[str, torch.Tensor], source: str = "weights") -> None:
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
        raise WeightsError(f"{source} do not fit model {getattr(model, 'model_name', model.cfg.kind)!r}: "
                           + "; ".join(parts) + ". Check --model / the JSON config next to the weights.")
    model.load_state_dict(sd, strict=True)


def load_paired(model, path: str, info: dict):
    """Load the safetensors file ``path`` strictly into ``model`` (built from ``info``, the JSON config
    beside it); a file that does not fit gets a message naming the keys. Sets ``weights_sha256`` and
    ``checkpoint_info``; returns the model in eval mode. Used by the localizer and the inpainter."""
    sd = clean_keys(read_state_dict(path))
    own = model.state_dict()
    want, got = set(own), set(sd)
    if want != got or any(own[k].shape != sd[k].shape for k in want):
        missing, extra = sorted(want - got)[:3], sorted(got - want)[:3]
        shapes = [k for k in sorted(want & got) if own[k].shape != sd[k].shape][:3]
        raise WeightsError(f"{path} does not fit its config {sidecar(path)} (missing {missing}, unexpected {extra}, "
                           f"shape mismatch {shapes}); retrain or restore the pair")
    model.load_state_dict(sd, strict=True)
    model.weights_sha256 = file_sha256(path)
    model.checkpoint_info = info
    return model.eval()


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


def load_checkpoint(path: str, model_name: str | None = None):
    """Rebuild the model from ``path`` and its JSON config (or from ``model_name``) and load the weights."""
    from fos.registry import build_from_cfg, build_model

    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} not found")
    if model_name is None or os.path.isfile(sidecar(path)):
        info = read_config(path)
        cfg = ModelCfg.from_dict({**info["model_cfg"], "pretrained": False})
        model = build_from_cfg(cfg)
        model.model_name = info.get("model_name", cfg.kind)
        model.preprocess_cfg = PreprocessCfg.from_dict(info.get("preprocess_cfg", {}))
        model.checkpoint_info = info
        if model_name is not None and cfg.kind not in model_name:
            raise WeightsError(f"{path} holds a {cfg.kind}, not a {model_name}")
    else:
        model = build_model(model_name, pretrained=False)
        model.preprocess_cfg = PreprocessCfg()
        model.checkpoint_info = {}
    load_state_dict_checked(model, clean_keys(read_state_dict(path)), source=path)
    model.weights_sha256 = file_sha256(path)
    return model.eval()


# --------------------------------------------------------------------------- official DiscoFOS layout
_OFFICIAL_ENCODER = re.compile(r"^(bg|fg)_encoder\.[0-2]\.0\.(\d+)\.(weight|bias)$")
_OFFICIAL_HEAD = {
    "distill_module.convs.0.": "head.conv1.",
    "distill_module.convs.2.": "head.conv2.",
    "distill_module.classifier.1.": "head.classifier.",
}
_OFFICIAL_IGNORED = ("auxiliary_classifier.",)  # the optional encoder classifier; not used at inference


def convert_official_student(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official DiscoFOS ``StudentModel`` (VGG19, roiconcat) keys -> ``student_vgg19`` keys.

    Returns the converted dict and the official keys that were deliberately dropped.
    """
    out, dropped = {}, []
    for k, v in clean_keys(sd).items():
        m = _OFFICIAL_ENCODER.match(k)
        if m:
            out[f"{m.group(1)}_encoder.features.{m.group(2)}.{m.group(3)}"] = v
            continue
        for src, dst in _OFFICIAL_HEAD.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = v
                break
        else:
            if k.startswith(_OFFICIAL_IGNORED):
                dropped.append(k)
            else:
                raise WeightsError(f"unexpected key {k!r} for the official DiscoFOS student layout")
    return out, dropped


def load_official_student(path_or_sd) -> Any:
    """Load an official DiscoFOS student checkpoint (``checkpoints/sfosd.pth``) into ``student_vgg19``."""
    import logging

    from fos.registry import build_model

    sd = read_state_dict(path_or_sd) if isinstance(path_or_sd, str) else path_or_sd
    converted, dropped = convert_official_student(sd)
    model = build_model("student_vgg19", pretrained=False)
    model.preprocess_cfg = PreprocessCfg(student_view="whole")  # the official student sees the whole photo
    load_state_dict_checked(model, converted, source="official DiscoFOS weights")
    if dropped:
        logging.getLogger(__name__).info("official checkpoint: ignored %d auxiliary classifier keys", len(dropped))
    return model.eval()
