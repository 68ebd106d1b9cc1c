"""M3Att knowledge poisoning, image side: where the poisons should sit and how their pixels get there.

The attacker knows neither the users' queries nor the knowledge base, only a small reference
pool from the same distribution. It profiles clusters of the pool's image embeddings
(:mod:`.clusters`), optionally fits free target vectors that cover the most reference queries
(:mod:`.objectives`, :mod:`.upper_bound`), picks a clean seed image per target
(:mod:`.seeding`) and moves its pixels towards the target: white-box PGD (:mod:`.pgd`),
black-box from similarity scores only (:mod:`.zeroth_order`), or on a surrogate encoder for
transfer (:mod:`.transfer`).
"""

from .clusters import Clusters, profile_clusters
from .objectives import coverage, covered, neighbour_thresholds, soft_coverage, soft_coverage_terms
from .pgd import PGDResult, group_by_size, pgd, pgd_by_size, quantise, require_gradients, uint8_to_pixels
from .seeding import seed_candidates
from .transfer import measure_similarity
from .upper_bound import fit_free_vectors
from .zeroth_order import ZerothOrderResult, similarity_oracle, zeroth_order_pgd

__all__ = [
    "Clusters", "PGDResult", "ZerothOrderResult", "coverage", "covered", "fit_free_vectors", "group_by_size",
    "measure_similarity", "neighbour_thresholds", "pgd", "pgd_by_size", "profile_clusters", "quantise",
    "require_gradients", "seed_candidates", "similarity_oracle", "soft_coverage", "soft_coverage_terms",
    "uint8_to_pixels", "zeroth_order_pgd",
]
