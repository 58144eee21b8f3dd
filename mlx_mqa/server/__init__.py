"""An OpenAI-style completions server over continuous batching of an encoder-decoder (see docs/server.md).

`python -m mlx_mqa.server --model DIR`. Library code here prints nothing; the CLI logs to stderr.
"""

from .admission import Admission, plan_slots
from .batching import BatchGenerator, Overloaded
from .step import BatchState

__all__ = ["Admission", "BatchGenerator", "BatchState", "Overloaded", "plan_slots"]
