"""HeadNorms: the norms the Recorder keeps of a head that trains beside the LoRA pairs, checked
against numpy on weights set by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lorascope.errors import UsageError
from lorascope.record.heads import HeadNorms, head_scalar


def test_norms_and_updates_are_numpys():
    head = nn.Linear(3, 2)
    pooler = nn.Linear(3, 3, bias=False)
    before = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(before))
        head.bias.fill_(0.5)
    norms = HeadNorms({"classifier": head, "bert.pooler": pooler})
    assert norms.names == ["classifier.weight", "classifier.bias", "bert.pooler.weight"]
    first = norms.start()
    assert first[head_scalar("classifier.weight", "norm")] == pytest.approx(np.linalg.norm(before), rel=1e-6)
    assert first[head_scalar("classifier.bias", "norm")] == pytest.approx(np.sqrt(0.5), rel=1e-6)
    delta = np.array([[0.1, -0.2, 0.0], [0.3, 0.0, 0.05]], dtype=np.float32)
    with torch.no_grad():
        head.weight.add_(torch.from_numpy(delta))
    after = norms.step()
    assert after[head_scalar("classifier.weight", "norm")] == pytest.approx(np.linalg.norm(before + delta), rel=1e-6)
    assert after[head_scalar("classifier.weight", "update")] == pytest.approx(np.linalg.norm(delta), rel=1e-5)
    assert after[head_scalar("classifier.bias", "update")] == 0.0
    assert after[head_scalar("bert.pooler.weight", "update")] == 0.0
    # the next step is measured from this one, not from the start
    assert norms.step()[head_scalar("classifier.weight", "update")] == 0.0


def test_a_shared_parameter_is_followed_once():
    head = nn.Linear(2, 2)
    assert HeadNorms({"score": head, "score.again": head}).names == ["score.weight", "score.bias"]


def test_a_name_too_long_for_the_file_is_refused_with_the_fix():
    with pytest.raises(UsageError, match="shorter module name"):
        HeadNorms({"x" * 60: nn.Linear(2, 2)})


def test_a_step_before_start_is_refused():
    with pytest.raises(UsageError, match="start"):
        HeadNorms({"score": nn.Linear(2, 2)}).step()
