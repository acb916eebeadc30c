"""``python -m peft_gift.recipes CONFIG.yaml ...``: the training CLI."""

import sys

from .cli import main

sys.exit(main())
