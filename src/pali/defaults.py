"""Length defaults and the ignored label id, each named once, in a module that imports nothing (the CLI's ``--help``
reads them without importing torch).

`GenerationConfig` (hence ``PaliModel.generate``), the pipeline and the CLI's
``--max-new-tokens`` all take `MAX_NEW_TOKENS`; `ProcessorConfig` takes the prompt and target
lengths, past which the processor truncates with a warning (or raises with ``truncation=False``).
A saved processor config carries its model's own lengths, which win over these.
"""

#: Longest generated answer, in tokens (eos included).
MAX_NEW_TOKENS = 32
#: Longest prompt, in tokens (eos included), before the processor truncates it.
MAX_PROMPT_LENGTH = 64
#: Longest training target (suffix), in tokens (eos included).
MAX_TARGET_LENGTH = 64

#: Label id the loss skips: padding after a target, and candidates' tails in scoring (the value
#: PyTorch's ``cross_entropy`` and transformers use).
IGNORE_INDEX = -100
