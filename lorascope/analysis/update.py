"""Which update the analysis calls ΔW for a recorded module, and which weight it is the update
from. ΔW_t = W_eff(t) − W_pretrained everywhere. Most inits start with B_0·A_0 = 0, so that is the
adapter's product scaling·B_t·A_t; an init that rewrites the base (lorascope's svd/PiSSA,
both_nonzero, gaussian_a_uniform_b; PEFT's pissa, olora, corda, loftq) keeps W − scaling·B_0·A_0
as the layer's base, so there ΔW_t = scaling·(B_t A_t − B_0 A_0), zero at step 0, and the
adapter's own product is a different matrix ("BA" in the tables).

The reading side never imports torch, so the inits that rewrite the base are named here from
the module's recorded `init` attribute; tests/test_analysis_update.py checks that lorascope's
names are exactly `Init.rewrites_base` of `lorascope.lora.inits`."""
from __future__ import annotations

import numpy as np

__all__ = ["REWRITES_BASE", "PEFT_REWRITES_BASE", "compensated", "pretrained_weight"]

# lorascope's own inits (lora/inits.py) whose base is W − scaling·B_0·A_0
REWRITES_BASE = frozenset({"svd", "both_nonzero", "gaussian_a_uniform_b"})
# PEFT's init_lora_weights values that move the init's product out of the base weight
# (pissa_niter_<n> is PiSSA with a randomised SVD)
PEFT_REWRITES_BASE = ("pissa", "olora", "corda", "loftq")


def compensated(kind: str, init: str) -> bool:
    """Whether the module's init rewrote the base, from its recorded `kind` and `init`."""
    init = str(init or "")
    if str(kind).startswith("peft."):
        return init.startswith(PEFT_REWRITES_BASE)
    return init in REWRITES_BASE


def pretrained_weight(W0: np.ndarray, kind: str, rewrote: bool, scaling: float,
                      A0: np.ndarray, B0: np.ndarray) -> np.ndarray:
    """The pretrained weight (out, in) in float64 from the recorded W0. lorascope's layer records
    the pretrained weight itself; PEFT's records the base it adds ΔW to, which after an init that
    rewrote it is the residual W − scaling·B_0·A_0, so the init's product is added back."""
    W = np.asarray(W0, dtype=np.float64)
    if rewrote and str(kind).startswith("peft."):
        W = W + float(scaling) * (np.asarray(B0, dtype=np.float64) @ np.asarray(A0, dtype=np.float64))
    return W
