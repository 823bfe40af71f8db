"""The transformer's sublayer injection surfaces (roadmap A1): post-attention and post-MLP, with stable codes."""

from __future__ import annotations

#: After a layer's attention residual add (``x + attn(ln_1(x))``).
POST_ATTN = "post_attn"
#: After a layer's MLP residual add (``x + mlp(ln_2(x))``): the layer's output.
POST_MLP = "post_mlp"

#: Stable surface codes (they enter observations and the lattice slot ids ``r{layer}c{code}``).
#: Code 0 is the core's ``segment_boundary``.
SURFACE_CODES: dict[str, int] = {POST_ATTN: 1, POST_MLP: 2}
