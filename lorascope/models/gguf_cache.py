"""A safetensors copy of a GGUF model, made once: transformers dequantises GGUF on every load
(about 12 s of CPU for SmolLM2-135M, plus a slow tokenizer build), and a GGUF-loaded model refuses
save_pretrained. The copy lives in $LORASCOPE_CACHE or ~/.cache/lorascope and is written atomically."""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch

__all__ = ["cache_root", "convert_gguf"]

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where converted models live: $LORASCOPE_CACHE, else ~/.cache/lorascope."""
    env = os.environ.get("LORASCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lorascope"


_MARKER = "lorascope_source.json"


def _source_stamp(gguf_path: Path) -> dict:
    # Name and size identify the file well enough: a different quantisation or release differs in both.
    return {"gguf_file": gguf_path.name, "gguf_size": gguf_path.stat().st_size, "cache_layout": 1}


def _cache_is_valid(target: Path, stamp: dict) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == stamp
    except (OSError, json.JSONDecodeError):
        return False


def _remove_orphaned_temps(target: Path) -> None:
    """Deletes temp folders left by conversions that were killed (their process no longer exists)."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # the process exists under another user: not ours to clean


def _write_converted(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # A GGUF-loaded model refuses save_pretrained (its config carries a quantization_config), so
    # rebuild the same architecture from a clean config and move the dequantised weights across.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict(), strict=True)
    clean.tie_weights()
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def convert_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """Returns a folder holding a safetensors copy of a GGUF model and its tokenizer, converting on
    first use. The conversion writes into a temp folder beside the cache and renames it into place,
    so a killed conversion never leaves a half-written cache that later runs would trust."""
    gguf_path = Path(gguf_path)
    target = cache_root() / (name or gguf_path.stem)
    stamp = _source_stamp(gguf_path)
    if _cache_is_valid(target, stamp):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temps(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("converting %s to safetensors once, into %s (under a minute)", gguf_path.name, target)
    try:
        _write_converted(gguf_path, tmp)
        (tmp / _MARKER).write_text(json.dumps(stamp))
        if target.exists():
            shutil.rmtree(target)  # a stale or foreign cache: the marker did not match
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            if not _cache_is_valid(target, stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
