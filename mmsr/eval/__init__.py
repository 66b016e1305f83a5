"""Exact full-ranking evaluation: metrics (`metrics`), ranking (`search`: FAISS top-k, `dense`: counting
by score blocks) and the choice between them (`backends`).

    from mmsr.eval import ItemIndex, full_ranking_metrics, rank_targets, top_k
    metrics = full_ranking_metrics(item_vectors, user_vectors, targets, (offsets, items), ks=(10, 20, 50))

Importing this package pulls in numpy only; FAISS is imported when an index is searched (or
"auto" measures it), torch when a torch.distributed process group is in use or a dense path
multiplies with torch. Protocols and backends: docs/eval.md.
"""

from mmsr.eval.backends import Choice, resolve_backend
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
from mmsr.eval.search import (
    Histories,
    ItemIndex,
    case_histories,
    faiss_has_gpu,
    full_ranking_metrics,
    rank_targets,
    shard_rows,
    top_k,
)

__all__ = [
    "Choice", "DEFAULT_KS", "Histories", "ItemIndex", "case_histories", "compute_metrics", "faiss_has_gpu", "finalize",
    "full_ranking_metrics", "hit_at_k", "metric_sums", "ndcg_at_k", "parse_ks", "rank_targets", "reduce_metric_sums",
    "resolve_backend", "shard_rows", "top_k",
]
