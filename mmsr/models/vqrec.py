"""VQRec (Hou et al., "Learning Vector-Quantized Item Representation for Transferable Sequential
Recommenders", WWW 2023), the seed's text-based baseline.

    text embedding of item i (frozen)  --OPQ + PQ, once-->  M code indices c_i1..c_iM
    item vector  =  sum over m of  E_m[c_im]       (learned code embeddings, M tables of K)
    users        =  a sequence model over item vectors; score = inner product

The quantizer is FAISS's (`OPQ{M},PQ{M}x{bits}`: a learned rotation, then product quantization
trained by k-means; `faiss.OPQMatrix` + `faiss.ProductQuantizer`), not a k-means of our own. Codes are fixed after `prepare`; they are saved
with the weights (a buffer), so `mmsr eval` needs no text encoder.

Departures from the paper: VQRec pre-trains the code embeddings and the transformer on other
domains and then fine-tunes; here it trains on the target dataset only (the seed's baseline
setting, §4.3). Text embeddings are the masked mean of the text encoder's output tokens
(VQRec uses BERT's [CLS]), and the code-to-code permutation learning of its fine-tuning stage
is left out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmsr.errors import MMSRError


def quantize(features: np.ndarray, codes: int, bits: int = 8) -> np.ndarray:
    """[N, d] float features -> [N, codes] int64 code indices in [0, 2**bits), with FAISS's OPQ + PQ."""
    import faiss

    features = np.ascontiguousarray(features, dtype=np.float32)
    n, d = features.shape
    if d % codes:
        raise MMSRError(f"vqrec: the text embedding has {d} dimensions, not divisible into {codes} codes",
                        hint=f"set model.vq_codes to a divisor of {d}")
    if n < 2 ** bits:
        raise MMSRError(f"vqrec: {n} items cannot train {2 ** bits} centroids per code",
                        hint="use a larger dataset, or fewer bits (model.vq_bits)")
    # FAISS's k-means sums in an order that depends on its thread count: on the demo's features
    # 58% of the codes moved between 1 and 2 threads, so a run's result depended on the machine.
    # One thread makes the codes a function of the features alone.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        # OPQ (a learned rotation) then PQ, spelled out so that both k-means may run on a small
        # catalogue: FAISS asks for 39 points per centroid by default and warns below that.
        opq_pq = _quantizer(faiss, d, codes, bits)
        opq = faiss.OPQMatrix(d, codes)
        opq.pq = opq_pq
        opq.train(features)
        rotated = opq.apply(features)
        pq = _quantizer(faiss, d, codes, bits)
        pq.train(rotated)
        return _unpack(pq.compute_codes(rotated), codes, bits)
    finally:
        faiss.omp_set_num_threads(threads)


def _quantizer(faiss, d: int, codes: int, bits: int):
    pq = faiss.ProductQuantizer(d, codes, bits)
    pq.cp.min_points_per_centroid = 1
    return pq


def _unpack(packed: np.ndarray, codes: int, bits: int) -> np.ndarray:
    if bits == 8:
        return packed[:, :codes].astype(np.int64)
    # Codes of other widths are packed little-endian, bit by bit (faiss's BitstringReader).
    bit_array = np.unpackbits(packed, axis=1, bitorder="little")[:, : codes * bits]
    weights = (1 << np.arange(bits, dtype=np.int64))
    return (bit_array.reshape(len(packed), codes, bits).astype(np.int64) * weights).sum(-1)


class VQRecItemTower(nn.Module):
    """Item ids -> the sum of their codes' embeddings. `prepare(text_features)` fixes the codes."""

    inputs = "ids"
    needs_features = "text"  # what `prepare` needs once, before training

    def __init__(self, num_items: int, dim: int, codes: int = 32, bits: int = 8):
        super().__init__()
        self.num_items, self.codes, self.bits = num_items, codes, bits
        self.register_buffer("item_codes", torch.zeros(num_items, codes, dtype=torch.long))
        self.register_buffer("offsets", torch.arange(codes, dtype=torch.long) * (2 ** bits), persistent=False)
        self.embedding = nn.Embedding(codes * 2 ** bits, dim)
        # A sum of `codes` embeddings at the scale of one ID embedding (std 0.02).
        nn.init.normal_(self.embedding.weight, std=0.02 / codes ** 0.5)

    def prepare(self, text_features: torch.Tensor) -> None:
        codes = quantize(text_features.float().cpu().numpy(), self.codes, self.bits)
        self.item_codes.copy_(torch.from_numpy(codes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.item_codes[ids] + self.offsets).sum(-2)

    def score_table(self) -> torch.Tensor:
        """Every item's vector at once (the full softmax): a gather and a sum per item."""
        return self(torch.arange(self.num_items, device=self.item_codes.device))
