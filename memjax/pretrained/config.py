"""One config for the pretrained decoders (Qwen2 family, Gemma3 text), read from HF or GGUF."""
from __future__ import annotations

import dataclasses
from typing import Any

from memjax.pretrained.errors import ModelLoadError

ARCHS = ("qwen2", "gemma3")
FULL, SLIDING = "full_attention", "sliding_attention"


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Everything the decoder needs; the arch presets differ only in these fields.

  Qwen2: pre-norm blocks, SwiGLU, qkv bias, one RoPE base, optional tied embeddings.
  Gemma3: pre- and post-norms around attention and MLP, GeGLU (tanh), qk-norm, norms stored as
  an offset from one, embeddings scaled by sqrt(dim), sliding-window layers interleaved with
  global ones, each kind with its own RoPE base.
  """
  arch: str
  vocab_size: int
  dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  hidden: int
  norm_eps: float = 1e-6
  rope_theta: float = 10_000.0           # global (full-attention) layers
  rope_local_theta: float = 10_000.0     # sliding-window layers
  rope_scale: float = 1.0                # linear RoPE scaling on global layers (positions / scale)
  layer_types: tuple[str, ...] = ()      # FULL or SLIDING per layer; () means all FULL
  sliding_window: int | None = None
  qkv_bias: bool = False
  qk_norm: bool = False
  norm_plus_one: bool = False
  post_norms: bool = False
  act: str = "silu"
  embed_scale: bool = False
  tie_embeddings: bool = True
  attn_scale: float | None = None        # None: head_dim ** -0.5
  final_logit_softcap: float | None = None
  attn_logit_softcap: float | None = None
  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int | None = None

  def __post_init__(self):
    if self.arch not in ARCHS:
      raise ModelLoadError(f"arch: {self.arch!r} is not supported (supported: {', '.join(ARCHS)})")
    if self.layer_types and len(self.layer_types) != self.num_layers:
      raise ModelLoadError(f"layer_types: {len(self.layer_types)} entries for "
                           f"{self.num_layers} layers")
    bad = [t for t in self.layer_types if t not in (FULL, SLIDING)]
    if bad:
      raise ModelLoadError(f"layer_types: unknown layer type {bad[0]!r}")
    if SLIDING in self.layer_types and not self.sliding_window:
      raise ModelLoadError("sliding_window: sliding layers need a positive window")
    if self.num_heads % self.num_kv_heads:
      raise ModelLoadError(f"num_key_value_heads: {self.num_kv_heads} does not divide "
                           f"num_attention_heads {self.num_heads}")

  def layer_type(self, i: int) -> str:
    return self.layer_types[i] if self.layer_types else FULL

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _rope(params: dict | None, path: str) -> tuple[float | None, float]:
  """(theta, linear scale) from a rope_parameters / rope_scaling entry."""
  if not params:
    return None, 1.0
  kind = params.get("rope_type", params.get("type", "default"))
  if kind == "default":
    return params.get("rope_theta"), 1.0
  if kind == "linear":
    return params.get("rope_theta"), float(params["factor"])
  raise ModelLoadError(f"{path}: rope_type {kind!r} is not supported (supported: default, linear)")


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x


def from_hf(cfg: dict[str, Any], where: str = "config.json") -> DecoderConfig:
  """DecoderConfig from a Hugging Face config.json (old rope_theta or new rope_parameters keys)."""
  model_type = cfg.get("model_type")
  if model_type == "gemma3" and "text_config" in cfg:  # multimodal wrapper: keep the text model
    outer = cfg
    cfg = dict(cfg["text_config"])
    cfg.setdefault("tie_word_embeddings", outer.get("tie_word_embeddings", True))
    model_type = "gemma3_text"
  arch = {"qwen2": "qwen2", "gemma3_text": "gemma3"}.get(model_type)
  if arch is None:
    raise ModelLoadError(f"{where}: model_type {model_type!r} is not supported "
                         f"(supported: qwen2, gemma3_text, gemma3)")

  def need(key):
    if key not in cfg or cfg[key] is None:
      raise ModelLoadError(f"{where}: missing field {key!r}")
    return cfg[key]

  dim, heads = int(need("hidden_size")), int(need("num_attention_heads"))
  num_layers = int(need("num_hidden_layers"))
  common = dict(
      vocab_size=int(need("vocab_size")), dim=dim, num_layers=num_layers, num_heads=heads,
      num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
      head_dim=int(cfg.get("head_dim") or dim // heads), hidden=int(need("intermediate_size")),
      norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
      bos_id=_first(cfg.get("bos_token_id")), eos_id=_first(cfg.get("eos_token_id")),
      pad_id=_first(cfg.get("pad_token_id")))
  rp = cfg.get("rope_parameters") or {}
  if arch == "qwen2":
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
      raise ModelLoadError(f"{where}: hidden_act {act!r} is not supported for qwen2 (silu)")
    theta, scale = _rope(rp if "rope_type" in rp or "rope_theta" in rp else cfg.get("rope_scaling"),
                         f"{where}: rope_parameters")
    theta = float(theta or cfg.get("rope_theta", 10_000.0))
    layer_types = ()
    window = None
    if cfg.get("use_sliding_window"):
      window = int(need("sliding_window"))
      max_window_layers = int(cfg.get("max_window_layers", num_layers))
      layer_types = tuple(cfg.get("layer_types") or
                          [SLIDING if i >= max_window_layers else FULL for i in range(num_layers)])
      if SLIDING not in layer_types:
        window = None
    return DecoderConfig(arch="qwen2", **common, rope_theta=theta, rope_local_theta=theta,
                         rope_scale=scale, layer_types=layer_types, sliding_window=window,
                         qkv_bias=bool(cfg.get("attention_bias", True)), act="silu",
                         tie_embeddings=bool(cfg.get("tie_word_embeddings", False)))
  # gemma3
  act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
  if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
    raise ModelLoadError(f"{where}: hidden_activation {act!r} is not supported for gemma3")
  if FULL in rp or SLIDING in rp:
    theta, scale = _rope(rp.get(FULL), f"{where}: rope_parameters.full_attention")
    local, local_scale = _rope(rp.get(SLIDING), f"{where}: rope_parameters.sliding_attention")
    if local_scale != 1.0:
      raise ModelLoadError(f"{where}: rope_parameters.sliding_attention: scaling not supported")
  else:
    theta, scale = _rope(cfg.get("rope_scaling"), f"{where}: rope_scaling")
    local = None
  theta = float(theta or cfg.get("rope_theta", 1_000_000.0))
  local = float(local or cfg.get("rope_local_base_freq", 10_000.0))
  layer_types = cfg.get("layer_types")
  if not layer_types:
    pattern = int(cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6)))
    layer_types = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers)]
  head_dim = common["head_dim"]
  return DecoderConfig(
      arch="gemma3", **common, rope_theta=theta, rope_local_theta=local, rope_scale=scale,
      layer_types=tuple(layer_types), sliding_window=int(cfg.get("sliding_window") or 4096),
      qkv_bias=bool(cfg.get("attention_bias", False)), qk_norm=True, norm_plus_one=True,
      post_norms=True, act="gelu_tanh", embed_scale=True,
      tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
      attn_scale=float(cfg.get("query_pre_attn_scalar") or head_dim) ** -0.5,
      # attn_logit_softcapping: Gemma 2 only; transformers' Gemma3 reads but never applies it.
      final_logit_softcap=cfg.get("final_logit_softcapping"))


def gemma3_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
  return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))


def to_hf(c: DecoderConfig) -> dict[str, Any]:
  """A config.json dict (transformers 5 spelling) that `from_hf` reads back to `c`."""
  common = dict(vocab_size=c.vocab_size, hidden_size=c.dim, num_hidden_layers=c.num_layers,
                num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                head_dim=c.head_dim, intermediate_size=c.hidden, rms_norm_eps=c.norm_eps,
                tie_word_embeddings=c.tie_embeddings, bos_token_id=c.bos_id,
                eos_token_id=c.eos_id, pad_token_id=c.pad_id)
  def rope(theta, scale):
    return ({"rope_type": "default", "rope_theta": theta} if scale == 1.0 else
            {"rope_type": "linear", "rope_theta": theta, "factor": scale})
  if c.arch == "qwen2":
    if c.layer_types or not c.qkv_bias:
      raise ValueError("to_hf: qwen2 with sliding layers or without qkv bias has no HF spelling")
    return dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu",
                rope_parameters=rope(c.rope_theta, c.rope_scale), use_sliding_window=False,
                **common)
  return dict(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
              hidden_activation="gelu_pytorch_tanh", layer_types=list(c.layer_types),
              sliding_window=c.sliding_window,
              rope_parameters={FULL: rope(c.rope_theta, c.rope_scale),
                               SLIDING: rope(c.rope_local_theta, 1.0)},
              query_pre_attn_scalar=round((c.attn_scale or c.head_dim ** -0.5) ** -2, 6),
              final_logit_softcapping=c.final_logit_softcap, **common)
