"""Efficiency accounting (params, BOPs, FLOPs, OPs, 1-bit size), packed 1-bit
export, and speed / memory benchmarking."""
from .builder import (build_segmentor, comparison_config, fp_counterpart,
                      load_config)
from .binary_ops import (MATMUL_COUNTERS, binary_input, binary_weight,
                         is_binary_layer, is_bop_layer,
                         register_matmul_counter)
from .complexity import (Complexity, ComplexityReport, analyze_complexity,
                         analyze_config, format_report, ratios)
from .export import (build_from_packed, load_packed, pack_model, read_packed,
                     save_packed)

__all__ = [
    'build_segmentor', 'comparison_config', 'fp_counterpart', 'load_config', 'MATMUL_COUNTERS',
    'Complexity', 'ComplexityReport', 'analyze_complexity', 'analyze_config',
    'binary_input', 'binary_weight', 'format_report', 'is_binary_layer',
    'is_bop_layer', 'ratios', 'register_matmul_counter', 'build_from_packed',
    'load_packed', 'pack_model', 'read_packed', 'save_packed'
]
