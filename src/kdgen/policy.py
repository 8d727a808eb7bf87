"""The D(eta, lambda) policy: which loss each generation trains with, and when two runs
share a patriarch (docs/method.md).

The patriarch M_0 learns from ``eta * CE + (1 - eta) * R`` (a strict teacher at eta = 1,
whatever the regulariser R), every student M_g from the ground truth and from M_{g-1}
with weight ``lam``. Everything here is a pure function of the config.
"""

from __future__ import annotations

from kdgen.config import Config


def is_strict(eta: float) -> bool:
    """Whether a teacher loss with this ``eta`` is plain cross-entropy: the regulariser has
    no weight, so every strict patriarch is the same model whatever ``regularizer`` says."""
    return eta == 1.0


def patriarch_key(config: Config) -> tuple[object, ...]:
    """What decides a patriarch's loss: runs of one seed and preset with equal keys train
    the same M_0 and may share it (``patriarch=``)."""
    if is_strict(config.eta):
        return ("strict",)
    return (config.eta, config.regularizer, config.k, config.regularizer_form)
