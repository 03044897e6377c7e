"""The projection roles ``lora.targets`` understands ("attn", "mlp", "q", ..., "down"), as
leaf-name patterns per model family. Data only, without torch: the CLI's help lists the role
names from here, and ``targets.py`` matches them against a model's modules."""
from __future__ import annotations

__all__ = ["ROLES"]

# Fine roles -> leaf-name patterns (regex, matched at the end of the module name), for GPT-2,
# Llama-family, BERT/RoBERTa, DistilBERT, OPT and GPT-NeoX. Data, not code: add a model here.
_FINE_ROLES: dict[str, tuple[str, ...]] = {
    "q": (r"q_proj", r"attention\.self\.query", r"attention\.q_lin"),
    "k": (r"k_proj", r"attention\.self\.key", r"attention\.k_lin"),
    "v": (r"v_proj", r"attention\.self\.value", r"attention\.v_lin"),
    # GPT-2 (and GPT-NeoX, Phi-3) fuse q, k and v into one projection.
    "qkv": (r"attn\.c_attn", r"query_key_value", r"qkv_proj"),
    "o": (r"o_proj", r"attn\.c_proj", r"attention\.output\.dense", r"attention\.out_lin",
          r"self_attn\.out_proj", r"attention\.dense"),
    "gate": (r"gate_proj",),
    "up": (r"up_proj", r"mlp\.c_fc", r"intermediate\.dense", r"ffn\.lin1", r"fc1",
           r"dense_h_to_4h"),
    # BERT's MLP output is "<layer>.output.dense"; "attention.output.dense" is the o projection.
    "down": (r"down_proj", r"mlp\.c_proj", r"layer\.\d+\.output\.dense", r"ffn\.lin2", r"fc2",
             r"dense_4h_to_h"),
}
_COARSE_ROLES: dict[str, tuple[str, ...]] = {
    "attn": ("q", "k", "v", "qkv", "o"),
    "mlp": ("gate", "up", "down"),
}
ROLES: dict[str, tuple[str, ...]] = {
    **{role: patterns for role, patterns in _FINE_ROLES.items()},
    **{
        role: tuple(p for fine in members for p in _FINE_ROLES[fine])
        for role, members in _COARSE_ROLES.items()
    },
}
