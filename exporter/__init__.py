"""BF16 checkpoint → OpenVINO IR levels for speculative decoding: the BF16 target, its quantized copy, drafts."""
