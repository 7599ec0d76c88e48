"""Checkpoint files: how latnas writes torch payloads and what a reader trusts in them.

A checkpoint is a dict written with `torch.save` (torch's zip format) and read with
`torch.load(weights_only=True)`. That load runs torch's restricted unpickler: it rebuilds only
tensors, their storages and primitive containers (dict, list, tuple, str, bytes, int, float,
bool, None) and refuses every other global a pickle names, so a hostile file cannot make the load
run code. It does not make the numbers trustworthy, which is what this module adds:

- the file is opened only if it is a regular file of at most `MAX_CHECKPOINT_BYTES`;
- every checkpoint written here carries `content_sha256`: a sha256 over a canonical serialisation
  of the whole payload (each entry's path, type and value; for a tensor its dtype, shape and
  bytes; mapping entries in sorted key order), so bytes flipped inside a tensor's storage, or in
  any other field, are refused at load;
- no floating-point tensor may hold NaN or inf, on writing or on reading.

A checkpoint written before the digest existed (legacy, no `content_sha256`) is accepted when
its tensors are finite: nothing can check its content beyond that. Every refusal is a
`CheckpointError` whose message is one line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from search_spaces.files import FileError, check_input_file, nesting_depth, write_bytes_atomic
from search_spaces.limits import MAX_CHECKPOINT_BYTES, MAX_NESTING

DIGEST_KEY = "content_sha256"


class CheckpointError(FileError, ValueError):
    """A checkpoint that is missing, not a regular file, truncated, of another format or space,
    altered since it was written (digest mismatch) or holding non-finite weights; one line."""


def shown(value: object) -> str:
    """`repr(value)` cut to 60 characters: how a message quotes a value read from a file or given by a
    caller, so that a forged field never floods the one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _entries(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every node of a payload (containers first, then their children) in a canonical order."""
    yield path, value
    if isinstance(value, Mapping):
        for key in sorted(value, key=lambda key: (type(key).__name__, repr(key))):
            yield from _entries(value[key], (*path, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _entries(item, (*path, index))


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    dense = tensor.detach().cpu()
    if dense.layout != torch.strided:
        dense = dense.to_dense()
    dense = dense.resolve_conj().resolve_neg().contiguous().reshape(-1)
    return memoryview(dense.view(torch.uint8).numpy())


def content_digest(payload: Mapping[str, Any]) -> str:
    """The sha256 (hex) of `payload` without its `content_sha256` entry, over a canonical
    serialisation: per node, `repr(path)`, then a header (a tensor's dtype and shape, a
    container's type and length, a primitive's type and `repr`), then a tensor's bytes."""
    digest = hashlib.sha256()
    content = {key: value for key, value in payload.items() if key != DIGEST_KEY}
    for path, value in _entries(content):
        digest.update(repr(path).encode("utf-8") + b"\0")
        if isinstance(value, torch.Tensor):
            digest.update(f"tensor {value.dtype} {tuple(value.shape)}".encode("utf-8") + b"\0")
            digest.update(_tensor_bytes(value))
        elif isinstance(value, (Mapping, list, tuple)):
            digest.update(f"{type(value).__name__} {len(value)}".encode("utf-8") + b"\0")
        else:
            digest.update(f"{type(value).__name__} {value!r}".encode("utf-8") + b"\0")
    return digest.hexdigest()


def _name(path: tuple[Any, ...]) -> str:
    return "/".join(str(part) for part in path) or "the payload"


def non_finite_tensor(payload: Any) -> str | None:
    """The path (`state_dict/stem.conv.weight`) of the first floating-point tensor of `payload`
    holding NaN or inf, or None when every one is finite."""
    for path, value in _entries(payload):
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            if not bool(torch.isfinite(value).all()):
                return _name(path)
    return None


def write_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write `payload` with its `content_sha256` to `path` atomically (`write_bytes_atomic`).

    A payload with a non-finite floating-point tensor is refused (`CheckpointError`) and nothing is
    written: the file at `path`, if any, keeps what it held.
    """
    bad = non_finite_tensor(payload)
    if bad is not None:
        raise CheckpointError(f"{path}: refusing to write a checkpoint whose {bad} holds NaN or inf")
    content = {key: value for key, value in payload.items() if key != DIGEST_KEY}
    content[DIGEST_KEY] = content_digest(content)
    buffer = io.BytesIO()
    torch.save(content, buffer)
    write_bytes_atomic(Path(path), buffer.getvalue())


def checkpoint_label(path: str | Path, option: str = "") -> str:
    """How messages name a checkpoint: its path, after the option that gave it when there is one."""
    return f"{option}: {path}" if option else str(path)


def load_checkpoint(path: str | Path, checkpoint_format: str, what: str, option: str = "") -> dict[str, Any]:
    """The payload of the checkpoint at `path` whose `format` is `checkpoint_format`, checked as the
    module says; `what` names the kind in messages ("supernet"), `option` the command-line option
    that gave the path (prefixed to messages when set). Raises `CheckpointError`."""
    label = checkpoint_label(path, option)
    if not os.path.lexists(path):
        raise CheckpointError(f"{label}: no such checkpoint file")
    try:
        checked = check_input_file(path, option, MAX_CHECKPOINT_BYTES)
    except FileError as error:
        raise CheckpointError(str(error)) from None
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles it then refuses: one line, not three
            warnings.simplefilter("ignore")
            payload = torch.load(checked, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many types for truncated or foreign files)
        raise CheckpointError(f"{label}: not a readable {what} checkpoint (truncated or corrupt: "
                              f"{type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != checkpoint_format:
        raise CheckpointError(f"{label}: not a latnas {what} checkpoint (expected format {checkpoint_format})")
    if nesting_depth(payload) > MAX_NESTING:
        raise CheckpointError(f"{label}: nested deeper than {MAX_NESTING} levels; not a latnas {what} checkpoint")
    stored = payload.get(DIGEST_KEY)
    if stored is not None:
        try:
            actual = content_digest(payload)
        except (RuntimeError, TypeError, ValueError) as error:
            raise CheckpointError(f"{label}: holds a tensor that cannot be checked ({type(error).__name__})") from None
        if stored != actual:
            raise CheckpointError(f"{label}: content does not match its sha256 digest (altered or damaged since it "
                                  "was written); refusing it")
    bad = non_finite_tensor(payload)
    if bad is not None:
        raise CheckpointError(f"{label}: {bad} holds NaN or inf values; refusing a diverged or damaged {what} checkpoint")
    return payload
