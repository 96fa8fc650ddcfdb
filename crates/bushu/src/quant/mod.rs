//! Quantization (lecture §5): affine integer quantization, llama.cpp's GGUF block types, GPTQ.
