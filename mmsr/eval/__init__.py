"""Exact full-ranking evaluation: metrics (`metrics`) and FAISS search (`search`).

    from mmsr.eval import ItemIndex, evaluate, rank_targets, recommend
    metrics = evaluate(item_vectors, user_vectors, targets, (offsets, items), ks=(10, 20, 50))

Importing this package pulls in numpy only; FAISS is imported when an index is built and
torch only when a torch.distributed process group is in use. Protocols: docs/eval.md.
"""

from mmsr.eval.metrics import (
    DEFAULT_KS,
    compute_metrics,
    finalize,
    hit_at_k,
    metric_sums,
    ndcg_at_k,
    parse_ks,
    reduce_metric_sums,
)
from mmsr.eval.search import Histories, ItemIndex, case_histories, evaluate, faiss_has_gpu, rank_targets, recommend, shard_rows

__all__ = [
    "DEFAULT_KS", "Histories", "ItemIndex", "case_histories", "compute_metrics", "evaluate", "faiss_has_gpu", "finalize", "hit_at_k",
    "metric_sums", "ndcg_at_k", "parse_ks", "rank_targets", "recommend", "reduce_metric_sums", "shard_rows",
]
