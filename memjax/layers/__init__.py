"""Building blocks shared by every memjax model."""
from memjax.layers.attention import Attention, CrossAttention, KVCache, attend, causal_mask
from memjax.layers.local_attention import (local_attention, local_attention_blocked,
                                           local_attention_reference, local_mask)
from memjax.layers.mlp import GatedMLP, blockwise
from memjax.layers.norms import RMSNorm, rms_norm
from memjax.layers.remat import remat
from memjax.layers.rope import apply_rope
from memjax.layers.token_shift import TokenShift
