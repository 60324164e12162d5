"""Stored weight layouts (pure torch)."""
from .bitpack import SUPPORTED_BITS, pack_codes, packed_words, unpack_codes
from .lowbit import (SUPPORTED_GROUP_SIZES, PackedWeight, check_packed, dequantize, num_groups,
                     pack_weight, quantize, rtn_scales)

__all__ = ["SUPPORTED_BITS", "SUPPORTED_GROUP_SIZES", "PackedWeight", "check_packed", "dequantize",
           "num_groups", "pack_codes", "pack_weight", "packed_words", "quantize", "rtn_scales", "unpack_codes"]
