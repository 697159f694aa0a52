"""torch_lottery: find lottery tickets in any PyTorch model, inside any training loop.

The core imports only torch (ticket files are safetensors files, written and read by
``torch_lottery.files``); torchvision, matplotlib, tqdm and torch-pruning are optional extras
imported where used.
"""

from .backends import BACKENDS, BakedBackend, MaskBackend, PruneBackend
from .analysis import mask_distance, mask_overlap
from .connectivity import InstabilityResult, instability, interpolate, spawn_copies
from .controls import fresh_init, random_masks_like
from .decorators import lottery_ticket
from .densities import DENSITY_RULES, kept_counts, layer_densities
from .early_bird import EarlyBird
from .lottery import LotteryTicket, per_round_rate
from .init_pruning import ABLATIONS, INIT_METHODS, init_scores, prune_at_init
from .planted import PlantedTicket, plant
from .scoring import CRITERIA
from .selection import prune_lowest
from .supermask import SupermaskTicket
from .supermask_files import load_supermask, save_supermask
from .targets import Target, find_targets
from .ticket_file import read_ticket_info, save_ticket
from .ticket_io import export_plain, load_ticket
from ._version import __version__

__all__ = [
    "ABLATIONS",
    "BACKENDS",
    "BakedBackend",
    "CRITERIA",
    "DENSITY_RULES",
    "INIT_METHODS",
    "InstabilityResult",
    "EarlyBird",
    "LotteryTicket",
    "MaskBackend",
    "PlantedTicket",
    "PruneBackend",
    "Target",
    "__version__",
    "export_plain",
    "find_targets",
    "instability",
    "interpolate",
    "mask_distance",
    "mask_overlap",
    "fresh_init",
    "init_scores",
    "kept_counts",
    "lottery_ticket",
    "layer_densities",
    "load_ticket",
    "per_round_rate",
    "prune_at_init",
    "plant",
    "prune_lowest",
    "random_masks_like",
    "read_ticket_info",
    "save_ticket",
    "SupermaskTicket",
    "load_supermask",
    "save_supermask",
    "spawn_copies",
]
