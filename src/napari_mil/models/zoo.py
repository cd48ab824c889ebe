"""Importing this module registers every architecture the project ships."""

from __future__ import annotations

from . import (  # noqa: F401  (importing registers the architectures)
    abmil_original,  # abmil_original (AttentionDeepMIL's Attention / GatedAttention)
    clam_mb,  # clam_mb (mahmoodlab CLAM_MB's forward)
    csmil,  # csmil
    dsmil_original,  # dsmil_original (dsmil-wsi's forward)
    focusmil,  # minet, focusmil
    icmil,  # icmil
    icmil_original,  # icmil_original (Dootmaan/ICMIL's bag heads)
    torchmil_adapters,  # abmil, gated_abmil, clam_sb, dsmil, smabmil
    torchmil_adapters_dtfd,  # dtfd_mil
    torchmil_adapters_transmil,  # transmil
    transmil_original,  # transmil_original (szc19990412/TransMIL's forward)
    zoommil,  # zoommil
)
