"""Applications over the recipes, behind the entry points in ``scripts/``: the accuracy and speed benchmarks
(:mod:`.accuracy`, :mod:`.speed`), the adapter visualiser (:mod:`.visualize`) and the data-parallel check
(:mod:`.ddp_check`).

Layering: these modules import the library (``peft_gift``) and :mod:`peft_gift.recipes`; neither imports anything
from here. Importing this package imports none of its modules. Progress goes through module loggers; the scripts
configure logging.
"""
