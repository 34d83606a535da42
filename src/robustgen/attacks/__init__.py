"""Attacks on float NCHW inputs in [0, 1]: the projected-gradient core (``pgd``), MultiTargeted
(``multitargeted``) and, for notebooks, attack objects in the torchattacks style (``objects``):
``robustgen.attacks.PGD(model, norm="linf", eps=8/255)(x, y) -> x_adv``."""

from robustgen.attacks.objects import APGD, APGDT, PGD, Attack, AutoAttack, MultiTargeted

__all__ = ["APGD", "APGDT", "Attack", "AutoAttack", "MultiTargeted", "PGD"]
