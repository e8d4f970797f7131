"""The seed question's manual cross-entropy, verbatim (the question "Cross Entropy in PyTorch").

Kept in one place because three things must run exactly the seed's arithmetic: the
``ATEN_CPU_CAPABILITY`` study (:mod:`precision_lab.studies.capability`), and the tests that
check the runner's generic mean reduction and the seed_81_percent experiment against the
seed's own code.
"""

from __future__ import annotations

__all__ = ["compute_crossentropyloss_manual"]


def compute_crossentropyloss_manual(x, y0):  # -> torch.Tensor (0-d, x's dtype)
    """The seed answer's function, unchanged except for dropping a commented-out print.

    x is the vector with shape (batch_size,C)
    y0 shape is the same (batch_size), whose entries are integers from 0 to C-1
    """
    import torch

    loss = 0.
    n_batch, n_class = x.shape
    for x1, y1 in zip(x, y0):
        class_index = int(y1.item())
        loss = loss + torch.log(torch.exp(x1[class_index])/(torch.exp(x1).sum()))
    loss = - loss/n_batch
    return loss
