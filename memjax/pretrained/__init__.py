"""Pretrained decoders (Qwen2 family, Gemma3 text) and their loaders (HF folder, GGUF).

    from memjax import pretrained
    p = pretrained.load("gemma3-270m")                 # or a HF folder, or a .gguf file
    ids = jnp.asarray([p.tokenizer.encode("Water freezes at", add_bos=True)])
    hidden, _ = p.model(ids)                           # BxTxD after the final norm
    logits = p.model.logits(hidden[:, -1:])            # float32, only where needed
    new = pretrained.greedy_generate(p.model, tokens_BxT=ids, max_new_tokens=8)
    p.tokenizer.decode(new[0])

Soft prompts: `p.model(embeds_BxTxD=jnp.concatenate([soft_BxKxD, p.model.embed(ids)], 1))`.
"""
from memjax.pretrained.api import (GEMMA3_270M, GEMMA_NOTICE, Pretrained, cache_dir,
                                          gemma3_270m_path, load, make_tiny, tiny_config,
                                          tiny_tokenizer)
from memjax.pretrained.config import DecoderConfig
from memjax.pretrained.decoder import Block, Decoder, token_log_probs
from memjax.pretrained.errors import ModelLoadError
from memjax.pretrained.generate import greedy_generate
from memjax.pretrained.tokenizer import Tokenizer
