"""tunegrid: one-command fine-tuning studies of GPT-2-class causal language models."""

import logging

# bitsandbytes (0.49 and later) is imported by every run, full fine-tuning too: transformers' Trainer imports
# peft, whose helpers import bitsandbytes. On a CPU with AVX512-BF16, that import tries the optional `kernels`
# package, which would fetch a fused 4-bit CPU matmul from the Hugging Face hub, and logs a warning when it is
# missing ("Failed to load CPU gemm_4bit_forward from kernels-community ... pip install kernels"). bitsandbytes
# then uses its own kernel; tunegrid fetches no code at run time, and only QLoRA on CPU runs a 4-bit matmul.
# The filter goes on that one logger before any module of tunegrid can import bitsandbytes, and drops that one
# message; every other bitsandbytes message passes.
KERNELS_HUB_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_the_kernels_hub_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(KERNELS_HUB_WARNING)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_the_kernels_hub_warning)
