"""Speculative generation over OpenVINO IR levels made by export-mxfp4 (openvino, openvino-tokenizers, numpy only)."""
