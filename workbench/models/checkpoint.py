"""Reading weight files safely and fitting their state dicts to a network.

:func:`read_weights` opens ``.pt``/``.pth`` with ``torch.load(weights_only=True)`` (no
code in the file ever runs) and ``.safetensors`` with safetensors. A file that needs full
unpickling is refused with one line naming :data:`CONVERT_COMMAND`, which the user may run
on a file they trust.

:func:`fit_state_dict` finds the weights inside whatever layout the file has:

- a bare state dict, or one wrapped under ``state_dict``, ``model``, ``state_dict_ema``,
  ``model_state_dict`` or ``net`` (the first present, unless a key is named);
- ``module.`` / ``model.`` prefixes, removed only while they prefix every key and the
  keys do not already fit the network;
- the MadryLab ``robustness`` library's ``AttackerModel``: ``[module.]model.*`` are the
  weights, ``[module.]normalizer.new_mean/new_std`` the normalisation (returned, so the
  wrapper applies it once) and the ``attacker.model.*`` duplicate is ignored.

Missing, unexpected or misshapen keys raise one :class:`CheckpointError` naming the file
and the first keys concerned, and so do weights that could not be what a network computes
with (:func:`check_values`): non-finite values, or a floating-point parameter stored as
integers, booleans or complex numbers. A torch file (a zip archive) whose members declare
more bytes than :func:`check_archive_sizes` allows is refused before anything is read.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, install_hint
from ..store import check_archive_sizes  # the store's own files get the same check

#: The documented conversion command (docs/models.md), named by every refusal.
CONVERT_COMMAND = "workbench convert-checkpoint {file} OUT.pt --trust"

#: Keys under which training scripts wrap their weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_state_dict", "net")

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class Weights:
    """A weight file's contents: the loaded object, its sha256 and its path."""

    obj: Any
    sha256: str
    path: Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_weights(path: str | Path) -> Weights:
    """Load a weight file without executing anything in it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such weight file" if not path.exists() else "not a file", file=str(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read weight file: {e.strerror}", file=str(path)) from None
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".safetensors":
        try:
            # optional: only for .safetensors checkpoints
            from safetensors.torch import load as st_load
        except ImportError:
            raise CheckpointError(f"reading .safetensors needs the safetensors package: {install_hint('models')}",
                                  file=str(path)) from None
        try:
            return Weights(st_load(data), digest, path)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"not a valid .safetensors file ({_first_line(e)})", file=str(path)) from None
    check_archive_sizes(data, str(path))
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message names the global outside its allow-list ("Unsupported global: GLOBAL x.y was
        # not an allowed global ..."): quote the name, not a cut of torch's long advice
        import re

        found = re.search(r"GLOBAL\s+([\w.]+)", str(e))
        raise CheckpointError(
            "refused: the file holds pickled Python objects that torch.load(weights_only=True) will not run"
            + (f" (the class or function {found.group(1)})" if found else "")
            + "; if you trust the file, convert it once with `" + CONVERT_COMMAND.format(file=path) + "` (docs/models.md)",
            file=str(path),
        ) from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise CheckpointError(f"not a readable torch file ({_first_line(e)})", file=str(path)) from None
    return Weights(obj, digest, path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap(obj: Any, file: str, key: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, where it was found) from a loaded file."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"no entry {key!r} in the file (it has: {have})", file=file)
        obj, where = obj[key], key
    elif _is_state_dict(obj):
        where = "(top level)"
    else:
        where = next((k for k in WRAPPER_KEYS if isinstance(obj, Mapping) and k in obj and _is_state_dict(obj[k])), None)
        if where is None:
            have = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(
                f"no state dict found (looked at the top level and under {', '.join(WRAPPER_KEYS)}; the file has: {have}); "
                "name the entry with source.state_dict_key", file=file)
        obj = obj[where]
    if not _is_state_dict(obj):
        raise CheckpointError(f"entry {where} is not a state dict of tensors", file=file)
    return dict(obj), where


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items()}


@dataclass
class Fitted:
    state: dict[str, torch.Tensor]
    layout: str
    mean: list[float] | None = None
    std: list[float] | None = None


def _robustness_layout(sd: dict[str, torch.Tensor]) -> Fitted | None:
    """The ``robustness`` library's AttackerModel: normalizer + model + attacker.model."""
    for outer in ("module.", ""):
        mean_k, std_k = f"{outer}normalizer.new_mean", f"{outer}normalizer.new_std"
        if mean_k in sd and std_k in sd and any(k.startswith(f"{outer}model.") for k in sd):
            inner = f"{outer}model."
            state = {k[len(inner):]: v for k, v in sd.items() if k.startswith(inner)}
            # attacker.model.* is the same network again (the attacker's handle on it): ignored
            return Fitted(state, "robustness AttackerModel", sd[mean_k].flatten().tolist(), sd[std_k].flatten().tolist())
    return None


def fit_state_dict(obj: Any, net: nn.Module, file: str, *, key: str | None = None) -> Fitted:
    """Find the weights for ``net`` in a loaded file; check every key and shape."""
    sd, where = unwrap(obj, file, key)
    target = net.state_dict()
    fitted = _robustness_layout(sd)
    layout = f"state dict at {where}"
    if fitted is not None:
        fitted.layout = f"{fitted.layout} ({where})"
        sd = fitted.state
    else:
        fitted = Fitted(sd, layout)
    stripped = []
    while not set(sd) <= set(target) or not set(target) <= set(sd):
        prefix = next((p for p in ("module.", "model.") if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            break
        sd = _strip(sd, prefix)
        stripped.append(prefix)
    if stripped:
        fitted.layout += f", prefix {''.join(stripped)!r} removed"
    # BatchNorm counters are absent from older files and do not change the outputs
    for k in target:
        if k not in sd and k.endswith("num_batches_tracked"):
            sd[k] = target[k].clone()
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shapes = [k for k in target if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape of {k} is {tuple(sd[k].shape)} in the file, {tuple(target[k].shape)} in the network"
                         + (f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""))
        raise CheckpointError(f"weights do not fit {type(net).__name__}: {'; '.join(parts)}", file=file)
    fitted.state = check_values(sd, target, file)
    return fitted


def check_values(sd: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], file: str) -> dict[str, torch.Tensor]:
    """The weights as the network's dtypes, or a :class:`CheckpointError` naming the first
    key that cannot be: a floating-point parameter must be stored as floating point (int8
    weights need their quantisation scales, complex ones are not weights of this network)
    and finite after the cast; an integer buffer (BatchNorm's counter) must hold whole
    numbers."""
    out = {}
    for k, want in target.items():
        v = sd[k]
        if want.is_floating_point():
            if not v.is_floating_point():
                raise CheckpointError(f"{k} holds {str(v.dtype).removeprefix('torch.')} values where the network has "
                                      f"{str(want.dtype).removeprefix('torch.')} weights; refusing to cast them "
                                      "(quantised or complex weights are not these weights)", file=file)
            cast = v.to(want.dtype)
            if not bool(torch.isfinite(cast).all()):
                bad = int((~torch.isfinite(cast)).sum())
                where = " after the cast to " + str(want.dtype).removeprefix("torch.") if bool(torch.isfinite(v).all()) else ""
                raise CheckpointError(f"{k} holds {bad} non-finite value(s) (NaN or infinite){where}; the weights "
                                      "are not usable", file=file)
            out[k] = cast
        elif v.is_complex() or (v.is_floating_point() and not bool((v == v.round()).all())):
            raise CheckpointError(f"{k} holds {str(v.dtype).removeprefix('torch.')} values where the network keeps "
                                  f"{str(want.dtype).removeprefix('torch.')} whole numbers", file=file)
        else:
            out[k] = v.to(want.dtype)
    return out


def _few(keys: list[str], n: int = 3) -> str:
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_into(net: nn.Module, fitted: Fitted) -> None:
    """Copy the fitted weights into ``net`` (dtypes follow the network)."""
    net.load_state_dict(fitted.state, strict=True)


def convert_checkpoint(src: str | Path, dst: str | Path, *, trust: bool) -> Path:
    """Rewrite a pickled checkpoint as plain tensors that load with ``weights_only=True``.

    This unpickles ``src`` fully, which runs whatever code the file holds: only with
    ``trust=True``, for a file whose origin the user trusts. Everything that is not a
    tensor, a number, a string or a container of these is dropped; modules become their
    state dicts.
    """
    src, dst = Path(src), Path(dst)
    if not trust:
        raise CheckpointError("converting unpickles the file, which can run code in it: pass --trust if you trust "
                              "where it came from", file=str(src))
    if not src.is_file():
        raise CheckpointError("no such file", file=str(src))
    obj = torch.load(src, map_location="cpu", weights_only=False)  # noqa: S614 - explicit, trusted by the user
    clean = _plain(obj)
    if clean is None:
        raise CheckpointError("nothing convertible in the file (no tensors)", file=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(clean, dst)
    return dst


def _plain(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, nn.Module):
        return _plain(obj.state_dict())
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        out = {str(k): _plain(v) for k, v in obj.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [v for v in (_plain(v) for v in obj) if v is not None]
    return None  # an arbitrary object (optimizer class, argparse Namespace, ...): dropped
