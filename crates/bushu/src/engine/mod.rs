//! The serving engine (issue 7), one concept per module as in nano-vllm.
