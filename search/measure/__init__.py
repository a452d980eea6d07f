"""Cost measurement: FLOPs (fvcore, mask-aware), parameters, saved size and interleaved latency of
the model as it ships (masks baked, batch norms folded).

Which ops the FLOP count includes, and why, is documented once in ``search.measure.flops``.
"""

from search.measure.flops import count_flops, flops_by_operator, layer_flops, leaf_flops, weight_density
from search.measure.folding import fold_batch_norms
from search.measure.latency import compare_latency, compare_stream_latency, latency, timed_copy
from search.measure.layers import layer_profile
from search.measure.size import compressed_fields, compressed_size_bytes, count_params, model_size_bytes

__all__ = [
    "compare_latency",
    "compare_stream_latency",
    "compressed_fields",
    "compressed_size_bytes",
    "count_flops",
    "count_params",
    "flops_by_operator",
    "fold_batch_norms",
    "latency",
    "layer_flops",
    "layer_profile",
    "leaf_flops",
    "model_size_bytes",
    "timed_copy",
    "weight_density",
]
